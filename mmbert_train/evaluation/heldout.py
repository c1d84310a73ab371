"""The held-out evaluation set: masked pieces of every language's held-out documents, fixed by (seed, language,
piece) so that any two checkpoints are scored on exactly the same masked tokens."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmbert_train.data.masking import DEFAULT_MASK_TOKEN_ID, DEFAULT_SPECIAL_IDS, mask_generator, mask_tokens
from mmbert_train.data.packing import cut_sample

from .errors import EvalError

HELDOUT_DIR = "heldout"


def language_key(language: str) -> int:
    """A stable 31-bit integer for a language id (part of the mask seed; Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.blake2b(language.encode(), digest_size=4).digest(), "little") >> 1


@dataclass
class MaskedPiece:
    input_ids: torch.Tensor  # (n,) int64, corrupted
    labels: torch.Tensor  # (n,) int64, original id at masked positions, -100 elsewhere


@dataclass
class HeldoutLanguage:
    language: str
    folders: list[str]  # held-out MDS folders read, relative to the data root
    samples: int
    input_tokens: int
    max_token_id: int
    pieces: list[MaskedPiece]


@dataclass
class HeldoutSet:
    """Masked held-out pieces per language, built once and scored against any number of models."""

    root: str
    mask_ratio: float
    seed: int
    max_seq_len: int
    max_samples_per_language: int | None
    languages: dict[str, HeldoutLanguage]

    def settings(self) -> dict:
        return {
            "data": self.root,
            "mask_ratio": self.mask_ratio,
            "seed": self.seed,
            "max_seq_len": self.max_seq_len,
            "max_samples_per_language": self.max_samples_per_language,
        }


def read_manifest(root: Path) -> dict:
    path = root / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise EvalError(
            f"{path}: missing; --data must be a folder written by `mmbert prep tokenize`"
        ) from None
    except ValueError as exc:
        raise EvalError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sources"), dict):
        raise EvalError(f"{path}: expected an object with a 'sources' mapping")
    return manifest


def heldout_folders(
    root: Path, manifest: Mapping, language: str, sources: Sequence[str] | None = None
) -> list[Path]:
    """Held-out folders of ``language`` (``rus`` matches ``rus`` and ``rus_Cyrl``), sources and folders sorted."""
    from mmbert_train.data.languages import normalize_language

    base = normalize_language(language, "--languages")
    found = []
    for source in sorted(manifest["sources"]):
        if sources is not None and source not in sources:
            continue
        for folder in sorted(manifest["sources"][source]):
            if normalize_language(folder, f"{root}/manifest.json: sources.{source}") != base:
                continue
            path = root / source / folder / HELDOUT_DIR
            if (path / "index.json").exists():
                found.append(path)
    return found


def load_heldout(
    root: str | os.PathLike,
    languages: Iterable[str],
    *,
    mask_ratio: float = 0.15,
    seed: int = 1234,
    max_seq_len: int | None = None,
    max_samples_per_language: int | None = None,
    sources: Sequence[str] | None = None,
    vocab_size: int,
    mask_token_id: int = DEFAULT_MASK_TOKEN_ID,
    special_ids: Sequence[int] = DEFAULT_SPECIAL_IDS,
) -> HeldoutSet:
    """Read and mask the held-out samples of ``languages`` (see the module docstring for the seeding).

    ``max_seq_len`` defaults to the manifest's; ``max_samples_per_language`` keeps the first N samples (in
    source, folder and shard order). ``vocab_size`` is the model's: random replacements are drawn below it.
    """
    from mmbert_train.data.languages import LanguageSetError, normalize_language
    from mmbert_train.data.mds import MDSError, iter_input_ids

    root = Path(root)
    manifest = read_manifest(root)
    if not 0.0 < mask_ratio < 1.0:
        raise EvalError(f"--mask-ratio must be in (0, 1), got {mask_ratio}")
    if max_seq_len is None:
        max_seq_len = int(manifest.get("max_seq_len", 0)) or None
        if max_seq_len is None:
            raise EvalError(f"{root}/manifest.json has no max_seq_len; pass --max-seq-len")
    if max_seq_len < 2:
        raise EvalError(f"--max-seq-len must be at least 2, got {max_seq_len}")
    if max_samples_per_language is not None and max_samples_per_language < 1:
        raise EvalError(f"--max-samples-per-language must be positive, got {max_samples_per_language}")
    if sources is not None:
        unknown = [s for s in sources if s not in manifest["sources"]]
        if unknown:
            raise EvalError(
                f"--source {', '.join(unknown)}: not in {root}/manifest.json "
                f"(sources: {', '.join(sorted(manifest['sources']))})"
            )

    out: dict[str, HeldoutLanguage] = {}
    for language in languages:
        try:
            base = normalize_language(language, "--languages")
        except LanguageSetError as exc:
            raise EvalError(str(exc)) from None
        if base in out:
            raise EvalError(f"--languages lists {base!r} twice")
        folders = heldout_folders(root, manifest, base, sources)
        if not folders:
            raise EvalError(
                f"no held-out data for language {base!r} under {root}/<source>/{base}[_Script]/{HELDOUT_DIR}/ "
                "(prepare with `mmbert prep tokenize --heldout-fraction F`; a language with one document has "
                "none); drop it from --languages"
            )
        key = language_key(base)
        pieces: list[MaskedPiece] = []
        samples = input_tokens = max_id = 0
        for folder in folders:
            try:
                for ids in iter_input_ids(folder):
                    if max_samples_per_language is not None and samples >= max_samples_per_language:
                        break
                    samples += 1
                    input_tokens += len(ids)
                    if len(ids):
                        max_id = max(max_id, int(ids.max()))
                    for piece in cut_sample(np.asarray(ids, dtype=np.int64), max_seq_len):
                        inputs, labels = mask_tokens(
                            torch.from_numpy(piece.copy()),
                            mask_ratio=mask_ratio,
                            mask_token_id=mask_token_id,
                            vocab_size=vocab_size,
                            special_ids=special_ids,
                            generator=mask_generator(seed, key, len(pieces)),
                        )
                        pieces.append(MaskedPiece(inputs, labels))
            except MDSError as exc:
                raise EvalError(str(exc)) from None
        if max_id >= vocab_size:
            raise EvalError(
                f"language {base!r}: held-out token id {max_id} is outside the model's vocabulary "
                f"({vocab_size}); the model and {root} use different tokenizers "
                f"(manifest tokenizer: {manifest.get('tokenizer')!r})"
            )
        out[base] = HeldoutLanguage(
            base, [str(f.relative_to(root)) for f in folders], samples, input_tokens, max_id, pieces
        )
    if not out:
        raise EvalError("no languages to evaluate")
    return HeldoutSet(str(root), mask_ratio, seed, max_seq_len, max_samples_per_language, out)


def all_heldout_languages(root: Path, sources: Sequence[str] | None = None) -> list[str]:
    """Every language with a held-out split in the data, sorted."""
    from mmbert_train.data.languages import normalize_language

    manifest = read_manifest(root)
    langs = set()
    for source, folders in manifest["sources"].items():
        if sources is not None and source not in sources:
            continue
        for folder in folders:
            if (root / source / folder / HELDOUT_DIR / "index.json").exists():
                langs.add(normalize_language(folder, f"{root}/manifest.json"))
    return sorted(langs)
