"""The held-out evaluation set: masked pieces of every language's held-out documents, fixed by (seed, language,
piece) so that any two checkpoints are scored on exactly the same masked tokens.

Two ways to build one: :meth:`HeldoutSet.from_data_config` from a recipe's ``data`` section (its ``data.eval``:
languages, groups, mask ratio, seed, lengths; what the training callback, the smoke chain and the decay-languages
experiment use), or :func:`load_heldout` from explicit arguments (``mmbert eval-mlm``)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mmbert_train.data.manifest import load_manifest
from mmbert_train.data.masking import DEFAULT_MASK_TOKEN_ID, DEFAULT_SPECIAL_IDS, mask_generator, mask_tokens
from mmbert_train.data.packing import cut_sample

from .errors import EvalError

if TYPE_CHECKING:
    from mmbert_train.data.spec import DataConfig

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
    # what to report (set by from_data_config): languages one by one, and named groups (aggregates); every
    # language of either is in `languages`
    reported: list[str] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_data_config(
        cls,
        data_cfg: DataConfig,
        *,
        vocab_size: int,
        mask_token_id: int = DEFAULT_MASK_TOKEN_ID,
        languages: Sequence[str] | str | None = None,
        groups: Mapping[str, Sequence[str] | str] | None = None,
        sources: Sequence[str] | None = None,
    ) -> HeldoutSet:
        """The held-out set a recipe's ``data`` section describes.

        Reads ``data_cfg.root``; masks at ``data_cfg.eval``'s fixed ``mask_ratio`` and ``seed``, cuts pieces of
        ``eval.max_seq_len`` (None: the phase's ``max_seq_len``) and keeps ``eval.max_samples_per_language``.
        Reports ``languages`` (default ``eval.languages``, or the phase's language set when that is None) and
        ``groups`` (default ``eval.groups``), each a list of ids or a language file (found as the phase's own
        language files are: :func:`mmbert_train.data.languages.find_language_file`). Languages without held-out
        documents are left out (a language with one document has none); a group left empty is dropped.
        ``sources``: read only these sources' held-out folders (None: every source in the manifest).
        ``vocab_size`` / ``mask_token_id`` are the model's.
        """
        from mmbert_train.data.languages import LanguageSetError, resolve_language_set

        ev = data_cfg.eval
        root = Path(data_cfg.root)
        have = set(all_heldout_languages(root, sources))
        if languages is None:
            languages = ev.languages if ev.languages is not None else data_cfg.languages
        if groups is None:
            groups = ev.groups

        def with_heldout(spec: Sequence[str] | str, where: str) -> list[str]:
            try:
                ids = resolve_language_set(spec, recipe_dir=data_cfg.recipe_dir, where=where)
            except LanguageSetError as exc:
                raise EvalError(str(exc)) from None
            return [x for x in ids if x in have]

        reported = with_heldout(languages, "data.eval.languages")
        kept = {name: with_heldout(spec, f"data.eval.groups.{name}") for name, spec in groups.items()}
        kept = {name: members for name, members in kept.items() if members}
        every = sorted(set(reported).union(*kept.values()))
        heldout = load_heldout(
            root,
            every,
            mask_ratio=ev.mask_ratio,
            seed=ev.seed,
            max_seq_len=ev.max_seq_len or data_cfg.max_seq_len,
            max_samples_per_language=ev.max_samples_per_language,
            sources=sources,
            vocab_size=vocab_size,
            mask_token_id=mask_token_id,
        )
        heldout.reported, heldout.groups = reported, kept
        return heldout

    def settings(self) -> dict:
        return {
            "data": self.root,
            "mask_ratio": self.mask_ratio,
            "seed": self.seed,
            "max_seq_len": self.max_seq_len,
            "max_samples_per_language": self.max_samples_per_language,
        }


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
    manifest = load_manifest(root)
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

    manifest = load_manifest(root)
    langs = set()
    for source, folders in manifest["sources"].items():
        if sources is not None and source not in sources:
            continue
        for folder in folders:
            if (root / source / folder / HELDOUT_DIR / "index.json").exists():
                langs.add(normalize_language(folder, f"{root}/manifest.json"))
    return sorted(langs)
