"""``mmbert data check DIR``: validate a downloaded MDS tree (the published mmBERT data) before a long run.

    mmbert data check data/mmbert-decay/train [--vocab-size 256000] [--max-seq-len 8192] [--recipe R.yaml]
        [--include GLOB] [--exclude GLOB] [--shards-per-dataset 1]

Read-only: nothing under DIR is written or moved. Checks, cheapest first:

1. every ``index.json`` reads as MDS v2; merged indexes only repeat shards of leaf datasets; folders holding no
   dataset (only ``num_tokens.json``) are named (pass ``--exclude`` to accept them);
2. every shard a leaf lists is there, with the size its index gives and the sample count in its header (4 bytes
   read per shard), and the ``input_ids`` column is an integer ``ndarray`` (or 4-byte ``bytes``);
3. ``--shards-per-dataset`` shards of each leaf (first, last, evenly between) are decoded: every sample non-empty,
   at most ``--max-seq-len`` tokens (the published chunker's 8192 by default; training cuts longer samples to the
   phase's length, a longer chunk here means a misread or corrupt file) and every id below ``--vocab-size``
   (the recipe's model vocabulary with ``--recipe``).

Prints one line per problem (the file and what is wrong) and a summary; exit status 1 when there are problems.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmbert_train.data.mds import COLUMN, MDSError, iter_shard_input_ids
from mmbert_train.data.published import (
    PublishedDataError,
    filter_tree,
    scan_tree,
    shard_basename,
    stats_tokens,
)

DEFAULT_VOCAB = 256_000  # Gemma 2
DEFAULT_MAX_LEN = 8192  # the published chunking (8192-512-32)
INT_KINDS = "iu"


@dataclass
class CheckReport:
    root: str
    datasets: int = 0
    shards: int = 0
    shards_decoded: int = 0
    samples_decoded: int = 0
    bytes_listed: int = 0
    max_id: int = 0
    longest: int = 0
    without_stats: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _encoding_problem(encoding: str) -> str | None:
    if encoding == "bytes":
        return None
    if encoding.startswith("ndarray"):
        _, _, dtype = encoding.partition(":")
        if not dtype:
            return None  # dtype stored per sample; checked when decoded
        try:
            kind = np.dtype(dtype).kind
        except TypeError:
            return f"unknown dtype {dtype!r}"
        return None if kind in INT_KINDS else f"dtype {dtype} is not an integer type"
    return f"encoding {encoding!r} is not an ndarray of integer ids"


def _pick(n: int, k: int) -> list[int]:
    if k <= 0 or n == 0:
        return []
    if k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]


def check_tree(
    root: str | os.PathLike,
    *,
    vocab_size: int = DEFAULT_VOCAB,
    max_seq_len: int = DEFAULT_MAX_LEN,
    shards_per_dataset: int = 1,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
) -> CheckReport:
    """Run the checks of the module docstring on ``root``; nothing is written."""
    report = CheckReport(str(root))
    exclude = exclude or []
    try:
        tree = scan_tree(root)
    except PublishedDataError as err:
        report.problems.append(str(err))
        return report
    leaves, empty = filter_tree(tree, include, exclude)
    for folder in empty:
        report.problems.append(
            f"{tree.root / folder}: holds no MDS dataset (no index.json with shards below it); download it "
            "or exclude it"
        )
    if not leaves:
        report.problems.append(
            f"{tree.root}: no leaf MDS dataset (a folder whose index.json lists its shards)"
        )
    for leaf in leaves:
        report.datasets += 1
        index_file = leaf.folder / "index.json"
        if stats_tokens(leaf) is None:
            report.without_stats.append(leaf.path)
        present = []
        for number, shard in enumerate(leaf.index["shards"]):
            report.shards += 1
            name = shard_basename(shard)
            where = f"{index_file} shard {number} ({name})"
            path = leaf.folder / name
            expected = int((shard.get("raw_data") or {}).get("bytes", -1))
            report.bytes_listed += max(expected, 0)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                report.problems.append(f"{where}: missing")
                continue
            if expected >= 0 and size != expected:
                report.problems.append(f"{where}: {size} bytes, index.json says {expected}")
                continue
            try:
                names, encodings = shard["column_names"], shard["column_encodings"]
                encoding = encodings[names.index(COLUMN)]
            except (KeyError, ValueError):
                report.problems.append(
                    f"{where}: no column {COLUMN!r} (columns: {shard.get('column_names')})"
                )
                continue
            problem = _encoding_problem(encoding)
            if problem:
                report.problems.append(f"{where}: column {COLUMN!r}: {problem}")
                continue
            with open(path, "rb") as f:
                head = f.read(4)
            n = int(np.frombuffer(head, np.uint32, 1)[0]) if len(head) == 4 else -1
            if n != int(shard["samples"]):
                report.problems.append(
                    f"{where}: header says {n} samples, index.json says {shard['samples']}"
                )
                continue
            present.append((number, shard))
        for i in _pick(len(present), shards_per_dataset):
            number, shard = present[i]
            where = f"{index_file} shard {number} ({shard_basename(shard)})"
            report.shards_decoded += 1
            long = bad = empty = 0
            try:
                for ids in iter_shard_input_ids(leaf.folder, shard, where):
                    report.samples_decoded += 1
                    if ids.dtype.kind not in INT_KINDS:
                        raise MDSError(f"{where}: {COLUMN!r} decodes as {ids.dtype}, expected integer ids")
                    if len(ids) == 0:
                        empty += 1
                        continue
                    top = int(ids.max())
                    report.max_id = max(report.max_id, top)
                    report.longest = max(report.longest, len(ids))
                    bad += top >= vocab_size or int(ids.min()) < 0
                    long += len(ids) > max_seq_len
            except (MDSError, ValueError, OSError) as err:
                report.problems.append(str(err))
                continue
            if bad:
                report.problems.append(
                    f"{where}: {bad} sample(s) with ids outside [0, {vocab_size}) (the vocabulary): another "
                    "tokenizer, or a wrong dtype"
                )
            if long:
                report.problems.append(f"{where}: {long} sample(s) longer than {max_seq_len} tokens")
            if empty:
                report.problems.append(f"{where}: {empty} empty sample(s)")
    return report


def format_report(report: CheckReport, seconds: float) -> str:
    lines = [f"{p}" for p in report.problems]
    gb = report.bytes_listed / 1e9
    lines.append(
        f"{report.root}: {report.datasets} datasets, {report.shards} shards ({gb:.3g} GB listed); "
        f"decoded {report.shards_decoded} shards / {report.samples_decoded} samples (max id {report.max_id}, "
        f"longest {report.longest}) in {seconds:.1f}s"
    )
    if report.without_stats:
        lines.append(
            f"  {len(report.without_stats)} dataset(s) without a usable stats.json: their tokens are counted "
            "from the shards once (cached outside this folder) when a run plans them"
        )
    lines.append("OK" if report.ok else f"{len(report.problems)} problem(s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="mmbert data",
        description="Check downloaded pre-tokenized MDS data (the published mmBERT layout) without writing to it.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("check", help="validate a downloaded tree (indexes, shards, dtypes, ids, lengths)")
    p.add_argument("dir", help="the downloaded folder, e.g. data/mmbert-decay/train")
    p.add_argument("--recipe", help="take --vocab-size from this recipe's model")
    p.add_argument("--vocab-size", type=int, help=f"ids must be below this (default {DEFAULT_VOCAB})")
    p.add_argument(
        "--max-seq-len", type=int, default=DEFAULT_MAX_LEN, help="longest sample allowed (default 8192)"
    )
    p.add_argument("--shards-per-dataset", type=int, default=1, help="shards decoded per dataset (default 1)")
    p.add_argument("--include", action="append", help="glob over dataset paths relative to DIR (repeatable)")
    p.add_argument("--exclude", action="append", default=[], help="glob to leave out (repeatable)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    args = parser.parse_args(argv)
    vocab = args.vocab_size
    if args.recipe:
        from mmbert_train.config import load_recipe
        from mmbert_train.schema import ConfigError

        try:
            recipe = load_recipe(args.recipe)
        except ConfigError as err:
            print(f"mmbert data check: error: {err}", file=sys.stderr)
            return 2
        vocab = vocab or recipe.model_config.vocab_size
    start = time.perf_counter()
    report = check_tree(
        args.dir,
        vocab_size=vocab or DEFAULT_VOCAB,
        max_seq_len=args.max_seq_len,
        shards_per_dataset=args.shards_per_dataset,
        include=args.include,
        exclude=args.exclude,
    )
    print(format_report(report, time.perf_counter() - start))
    if args.json:
        from dataclasses import asdict

        from mmbert_train.atomic import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps(asdict(report), indent=1))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
