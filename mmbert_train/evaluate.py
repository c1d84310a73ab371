"""Held-out masked-LM accuracy and loss per language and per group of languages: ``mmbert eval-mlm``.

    mmbert eval-mlm MODEL --data MDS --languages FILE [--group NAME=FILE ...] [--mask-ratio 0.15] [--seed 1234]

``MODEL`` is anything :func:`mmbert_train.model.load_pretrained` reads (a Hugging Face directory, one of our
Composer checkpoints, a FlexBert checkpoint). The text is the held-out split that ``mmbert prep tokenize`` wrote
to ``MDS/<source>/<language>/heldout/``: documents no phase trains on.

What is measured. Every held-out sample is cut into pieces of at most ``max_seq_len`` tokens (the loader's
:func:`~mmbert_train.data.packing.cut_sample`) and corrupted with the training code's
:func:`~mmbert_train.data.masking.mask_tokens` (80/10/10, specials never picked) at ONE fixed ``mask_ratio``.
The generator of piece ``j`` of language ``L`` is ``mask_generator(seed, key(L), j)``, so the masks depend
only on ``(seed, language, piece)``: not on the model, the batch size, or which other languages are
evaluated. Two checkpoints are therefore scored on exactly the same masked tokens, whatever mask ratio their
phase trained with. Pieces are scored as separate documents (flat packed batches: attention never crosses a
piece), so batching does not change the result. For language ``L`` with masked positions ``M_L``::

    accuracy_L = #{i in M_L : argmax_v logits_i[v] == x_i} / |M_L|
    loss_L     = sum_{i in M_L} -log softmax(logits_i)[x_i] / |M_L|          (nats per masked token)

A group ``G`` aggregates its languages weighted by masked tokens (``accuracy_G = sum correct / sum |M_L|``,
likewise the loss) and also reports the unweighted mean over its languages (``macro_accuracy``,
``macro_loss``), which is what a "typical language of the group" sees when the languages differ in size.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmbert_train.data.masking import DEFAULT_MASK_TOKEN_ID, DEFAULT_SPECIAL_IDS, mask_generator, mask_tokens
from mmbert_train.data.packing import cut_sample

IGNORE_INDEX = -100
HELDOUT_DIR = "heldout"
DEFAULT_BATCH_TOKENS = 16384


class EvalError(ValueError):
    """Bad input to the evaluation; the message names the file, language or option and what was expected."""


# ---- scores ---------------------------------------------------------------------------------------------------


@dataclass
class MLMScore:
    """Sums over masked tokens: ``tokens`` masked positions, ``correct`` top-1 hits, ``loss_sum`` in nats."""

    tokens: int = 0
    correct: int = 0
    loss_sum: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.tokens if self.tokens else math.nan

    @property
    def loss(self) -> float:
        return self.loss_sum / self.tokens if self.tokens else math.nan

    def __add__(self, other: MLMScore) -> MLMScore:
        return MLMScore(
            self.tokens + other.tokens, self.correct + other.correct, self.loss_sum + other.loss_sum
        )


@dataclass
class LanguageResult:
    language: str
    samples: int  # held-out samples read
    input_tokens: int  # their tokens (bos/eos included)
    score: MLMScore

    def as_dict(self) -> dict:
        return {
            "samples": self.samples,
            "input_tokens": self.input_tokens,
            "masked_tokens": self.score.tokens,
            "correct": self.score.correct,
            "accuracy": self.score.accuracy,
            "loss": self.score.loss,
        }


@dataclass
class GroupResult:
    name: str
    languages: list[str]
    score: MLMScore  # token-weighted: sums over the group's languages
    macro_accuracy: float  # unweighted mean of the languages' accuracies
    macro_loss: float

    def as_dict(self) -> dict:
        return {
            "languages": self.languages,
            "masked_tokens": self.score.tokens,
            "correct": self.score.correct,
            "accuracy": self.score.accuracy,
            "loss": self.score.loss,
            "macro_accuracy": self.macro_accuracy,
            "macro_loss": self.macro_loss,
        }


@dataclass
class MLMReport:
    """The result of one evaluation; ``as_dict`` is the JSON written by ``--output``."""

    settings: dict
    languages: dict[str, LanguageResult]
    groups: dict[str, GroupResult] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            **self.settings,
            "languages": {k: v.as_dict() for k, v in self.languages.items()},
            "groups": {k: v.as_dict() for k, v in self.groups.items()},
        }

    def csv_rows(self) -> list[dict]:
        rows = []
        for name, g in self.groups.items():
            rows.append(
                {"kind": "group", "name": name, "languages": len(g.languages), "samples": "",
                 "masked_tokens": g.score.tokens, "correct": g.score.correct, "accuracy": g.score.accuracy,
                 "loss": g.score.loss, "macro_accuracy": g.macro_accuracy, "macro_loss": g.macro_loss}
            )  # fmt: skip
        for name, r in self.languages.items():
            rows.append(
                {"kind": "language", "name": name, "languages": 1, "samples": r.samples,
                 "masked_tokens": r.score.tokens, "correct": r.score.correct, "accuracy": r.score.accuracy,
                 "loss": r.score.loss, "macro_accuracy": r.score.accuracy, "macro_loss": r.score.loss}
            )  # fmt: skip
        return rows


def aggregate_groups(
    results: Mapping[str, LanguageResult], groups: Mapping[str, Sequence[str]]
) -> dict[str, GroupResult]:
    """Token-weighted sums (and unweighted means) over each group's languages.

    Every language of a group must have been evaluated; a missing one is an :class:`EvalError` naming it.
    Languages with no masked token count in the sums but not in the macro means.
    """
    out = {}
    for name, members in groups.items():
        missing = [lang for lang in members if lang not in results]
        if missing:
            raise EvalError(
                f"group {name!r}: language(s) {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''} "
                "were not evaluated; add them to --languages"
            )
        if not members:
            raise EvalError(f"group {name!r} has no languages")
        total = MLMScore()
        for lang in members:
            total = total + results[lang].score
        scored = [results[lang].score for lang in members if results[lang].score.tokens]
        macro_acc = float(np.mean([s.accuracy for s in scored])) if scored else math.nan
        macro_loss = float(np.mean([s.loss for s in scored])) if scored else math.nan
        out[name] = GroupResult(name, list(members), total, macro_acc, macro_loss)
    return out


# ---- held-out data ------------------------------------------------------------------------------------------


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
    from data_prep.stats import StatsError, iter_input_ids
    from mmbert_train.data.languages import LanguageSetError, normalize_language

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
            except StatsError as exc:
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


# ---- scoring ----------------------------------------------------------------------------------------------------


def _flat_batches(pieces: Sequence[MaskedPiece], batch_tokens: int) -> Iterable[list[MaskedPiece]]:
    batch: list[MaskedPiece] = []
    n = 0
    for piece in pieces:
        if batch and n + len(piece.input_ids) > batch_tokens:
            yield batch
            batch, n = [], 0
        batch.append(piece)
        n += len(piece.input_ids)
    if batch:
        yield batch


@torch.no_grad()
def score_pieces(model: torch.nn.Module, pieces: Sequence[MaskedPiece], batch_tokens: int) -> MLMScore:
    """Sum of correct top-1 predictions and cross-entropy over the masked tokens of ``pieces``.

    Pieces go through the model as flat packed batches (contract 1, form 3) of about ``batch_tokens`` tokens;
    the model's sparse head returns logits for the labelled positions only, in flat order.
    """
    device = next(model.parameters()).device
    total = MLMScore()
    for batch in _flat_batches(pieces, batch_tokens):
        labels = torch.cat([p.labels for p in batch])
        if not bool((labels != IGNORE_INDEX).any()):
            continue
        input_ids = torch.cat([p.input_ids for p in batch])
        lens = torch.tensor([len(p.input_ids) for p in batch], dtype=torch.int32)
        cu_seqlens = torch.nn.functional.pad(torch.cumsum(lens, 0, dtype=torch.int32), (1, 0))
        out = model(
            input_ids.to(device),
            labels=labels.to(device),
            cu_seqlens=cu_seqlens.to(device),
            max_seqlen=int(lens.max()),
            return_logits=True,
        )
        targets = labels[labels != IGNORE_INDEX].to(device)
        logits = out.logits.float()
        total = total + MLMScore(
            tokens=int(targets.numel()),
            correct=int((logits.argmax(dim=-1) == targets).sum()),
            loss_sum=float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum").double()),
        )
    return total


def evaluate_model(
    model: torch.nn.Module,
    heldout: HeldoutSet,
    groups: Mapping[str, Sequence[str]] | None = None,
    *,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: bool = False,
) -> MLMReport:
    """Score ``model`` on every language of ``heldout`` and aggregate ``groups`` (language lists)."""
    config = getattr(model, "config", None)
    if config is not None and heldout.max_seq_len > config.max_position_embeddings:
        raise EvalError(
            f"--max-seq-len {heldout.max_seq_len} is above the model's max_position_embeddings "
            f"({config.max_position_embeddings}); pass --max-seq-len {config.max_position_embeddings} or less"
        )
    was_training = model.training
    model.eval()
    results: dict[str, LanguageResult] = {}
    items = heldout.languages.values()
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="eval-mlm", unit="lang", file=sys.stderr)
    try:
        for lang in items:
            score = score_pieces(model, lang.pieces, batch_tokens)
            results[lang.language] = LanguageResult(lang.language, lang.samples, lang.input_tokens, score)
    finally:
        model.train(was_training)
    return MLMReport(
        settings=heldout.settings(), languages=results, groups=aggregate_groups(results, groups or {})
    )


# ---- files and CLI --------------------------------------------------------------------------------------------


def resolve_languages(spec: str, where: str) -> list[str]:
    """A comma-separated list of ids, or a language file (one id per line, ``#`` comments; found as
    :func:`mmbert_train.data.languages.find_language_file` finds recipe language files)."""
    from mmbert_train.data.languages import (
        LanguageSetError,
        find_language_file,
        normalize_languages,
        read_language_file,
    )

    items = [s.strip() for s in spec.split(",") if s.strip()]
    try:
        # a file when it exists or looks like a path; otherwise ids (checked, so "english" is a clear error)
        if os.path.isfile(spec) or "/" in spec or os.sep in spec or "." in spec:
            return read_language_file(find_language_file(spec))
        return normalize_languages(items, where)
    except (LanguageSetError, OSError) as exc:
        raise EvalError(f"{where}: {exc}") from None


def parse_group(text: str) -> tuple[str, list[str]]:
    name, sep, spec = text.partition("=")
    if not sep or not name.strip() or not spec.strip():
        raise EvalError(f"--group {text!r}: expected NAME=FILE or NAME=lang1,lang2,...")
    return name.strip(), resolve_languages(spec.strip(), f"--group {name.strip()}")


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


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(report: MLMReport, path: str | os.PathLike) -> Path:
    path = Path(path)
    _atomic_write(path, json.dumps(report.as_dict(), indent=2, allow_nan=True) + "\n")
    return path


def write_csv(report: MLMReport, path: str | os.PathLike) -> Path:
    path = Path(path)
    buf = io.StringIO()
    rows = report.csv_rows()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(path, buf.getvalue())
    return path


def format_report(report: MLMReport, max_languages: int = 40) -> str:
    lines = [f"{'':<8}{'name':<24}{'langs':>6}{'masked':>10}{'accuracy':>10}{'loss':>9}{'macro acc':>11}"]
    for name, g in report.groups.items():
        lines.append(
            f"{'group':<8}{name:<24}{len(g.languages):>6}{g.score.tokens:>10}{g.score.accuracy:>10.4f}"
            f"{g.score.loss:>9.4f}{g.macro_accuracy:>11.4f}"
        )
    shown = list(report.languages.items())
    for name, r in shown[:max_languages]:
        lines.append(
            f"{'lang':<8}{name:<24}{1:>6}{r.score.tokens:>10}{r.score.accuracy:>10.4f}{r.score.loss:>9.4f}"
        )
    if len(shown) > max_languages:
        lines.append(f"... {len(shown) - max_languages} more languages (see --output / --csv)")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmbert eval-mlm",
        description="Held-out masked-token accuracy and loss per language and group, at a fixed mask ratio "
        "and seed (the same masked tokens for every checkpoint).",
    )
    p.add_argument("model", help="Hugging Face directory or Composer checkpoint (.pt) of an mmBERT encoder")
    p.add_argument("--data", required=True, help="MDS root written by `mmbert prep tokenize` (manifest.json)")
    p.add_argument(
        "--languages",
        help="language file (one id per line) or comma-separated ids; default: every language with held-out data",
    )
    p.add_argument(
        "--group", action="append", default=[], metavar="NAME=FILE|IDS",
        help="report an aggregate over these languages (repeatable); 'all' (every language) is always added",
    )  # fmt: skip
    p.add_argument("--source", action="append", default=None, help="read only this source (repeatable)")
    p.add_argument("--mask-ratio", type=float, default=0.15, help="share of tokens masked (default 0.15)")
    p.add_argument("--seed", type=int, default=1234, help="mask seed (default 1234)")
    p.add_argument(
        "--max-seq-len", type=int, default=None, help="cut held-out samples to this (default: manifest)"
    )
    p.add_argument("--max-samples-per-language", type=int, default=None, help="first N held-out samples only")
    p.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS, help="tokens per forward pass")
    p.add_argument("--attn-backend", default=None, help="override the model's attention backend (e.g. sdpa)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--trust-pickle", action="store_true", help="allow full unpickling of a trusted .pt file")
    p.add_argument("--output", help="write the full report as JSON here")
    p.add_argument("--csv", help="write one row per group and language as CSV here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from mmbert_train.data.languages import LanguageSetError
    from mmbert_train.model import load_pretrained
    from mmbert_train.model.checkpoints import CheckpointError

    try:
        root = Path(args.data)
        languages = (
            resolve_languages(args.languages, "--languages")
            if args.languages
            else all_heldout_languages(root, args.source)
        )
        groups = dict(parse_group(g) for g in args.group)
        if "all" not in groups:
            groups = {"all": languages, **groups}
        if not Path(args.model).exists():
            raise EvalError(f"{args.model}: no such checkpoint or directory")
        overrides = {"attn_backend": args.attn_backend} if args.attn_backend else {}
        model = load_pretrained(args.model, trust_pickle=args.trust_pickle, **overrides).to(args.device)
        start = time.perf_counter()
        heldout = load_heldout(
            root,
            languages,
            mask_ratio=args.mask_ratio,
            seed=args.seed,
            max_seq_len=args.max_seq_len,
            max_samples_per_language=args.max_samples_per_language,
            sources=args.source,
            vocab_size=model.config.vocab_size,
            mask_token_id=model.config.mask_token_id,
        )
        report = evaluate_model(
            model, heldout, groups, batch_tokens=args.batch_tokens, progress=not args.no_progress
        )
    except (EvalError, CheckpointError, LanguageSetError, FileNotFoundError) as exc:
        print(f"mmbert eval-mlm: error: {exc}", file=sys.stderr)
        return 2
    report.settings = {"model": str(args.model), **report.settings, "seconds": time.perf_counter() - start}
    print(format_report(report))
    if args.output:
        print(f"wrote {write_json(report, args.output)}", file=sys.stderr)
    if args.csv:
        print(f"wrote {write_csv(report, args.csv)}", file=sys.stderr)
    return 0


__all__ = [
    "EvalError",
    "GroupResult",
    "HeldoutSet",
    "LanguageResult",
    "MLMReport",
    "MLMScore",
    "aggregate_groups",
    "evaluate_model",
    "load_heldout",
    "main",
    "score_pieces",
    "write_csv",
    "write_json",
]
