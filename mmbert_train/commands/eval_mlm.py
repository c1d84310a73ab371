"""``mmbert eval-mlm``: held-out MLM accuracy and loss of any checkpoint, per language and group.

    mmbert eval-mlm MODEL --data MDS --languages FILE [--group NAME=FILE ...] [--mask-ratio 0.15] [--seed 1234]

What is measured: :mod:`mmbert_train.evaluation`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from mmbert_train.evaluation import (
    DEFAULT_BATCH_TOKENS,
    EvalError,
    all_heldout_languages,
    evaluate_model,
    format_report,
    load_heldout,
    write_csv,
    write_json,
)


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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmbert eval-mlm",
        description="Held-out masked-token accuracy and loss per language and group, at a fixed mask ratio "
        "and seed (the same masked tokens for every checkpoint).",
    )
    p.add_argument(
        "model", help="a checkpoint of any format (HF dir, .safetensors, Composer .pt, sharded FSDP dir)"
    )
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
    from mmbert_train.checkpoints import CheckpointError
    from mmbert_train.data.languages import LanguageSetError
    from mmbert_train.data.manifest import ManifestError
    from mmbert_train.model import load_pretrained

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
    except (EvalError, CheckpointError, LanguageSetError, ManifestError, FileNotFoundError) as exc:
        print(f"mmbert eval-mlm: error: {exc}", file=sys.stderr)
        return 2
    report.settings = {"model": str(args.model), **report.settings, "seconds": time.perf_counter() - start}
    print(format_report(report))
    if args.output:
        print(f"wrote {write_json(report, args.output)}", file=sys.stderr)
    if args.csv:
        print(f"wrote {write_csv(report, args.csv)}", file=sys.stderr)
    return 0
