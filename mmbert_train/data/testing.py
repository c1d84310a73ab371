"""Synthetic data in the published mmBERT layout, for tests and benchmarks (see `mmbert_train.data.published`).

:func:`write_published_tree` writes, with Streaming's ``MDSWriter``, what a download of the published data looks
like: ``train/<source>/<chunk>-tokenized-chunked-8192-512-32-backfill-nodups/`` leaves (``input_ids`` as
``ndarray:uint32`` + ``id`` as ``str``, written with zstd and then decompressed, so the folders hold only raw
``shard.NNNNN.mds`` while ``index.json`` still names ``compression: zstd`` and a ``zip_data`` entry), a
``stats.json`` per leaf, merged ``index.json`` + ``num_tokens.json`` at source and root level, and source folders
holding only ``num_tokens.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

CHUNK_SUFFIX = "-tokenized-chunked-8192-512-32-backfill-nodups"
COLUMNS = {"input_ids": "ndarray:uint32", "id": "str"}


def _decompress_in_place(leaf: Path) -> None:
    """Replace every zipped shard by its raw file, leaving index.json as written (naming the zip)."""
    from streaming.base.compression import decompress

    index = json.loads((leaf / "index.json").read_text())
    for shard in index["shards"]:
        zip_info, raw_name = shard.get("zip_data"), shard["raw_data"]["basename"]
        if zip_info and (leaf / zip_info["basename"]).exists():
            data = decompress(shard["compression"], (leaf / zip_info["basename"]).read_bytes())
            (leaf / raw_name).write_bytes(data)
            (leaf / zip_info["basename"]).unlink()


def write_leaf(
    folder: Path,
    lengths: Sequence[int],
    *,
    vocab_size: int,
    seed: int,
    name: str = "doc",
    size_limit: int | None = 1 << 14,
    dtype: str = "uint32",
    stats: bool = True,
    id_range: tuple[int, int] | None = None,
) -> int:
    """One leaf dataset of samples with these ``lengths`` (bos 2 first, eos 1 last, the other ids drawn from
    ``id_range``, default [5, vocab)); returns its tokens."""
    from streaming import MDSWriter

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = 0
    columns = dict(COLUMNS, input_ids=f"ndarray:{dtype}")
    with MDSWriter(out=str(folder), columns=columns, compression="zstd", size_limit=size_limit) as writer:
        low, high = id_range or (5, vocab_size)
        for i, n in enumerate(lengths):
            ids = rng.integers(low, high, size=n).astype(dtype)
            ids[0] = 2
            if n > 1:
                ids[-1] = 1
            writer.write({"input_ids": ids, "id": f"{name}-{i}"})
            tokens += n
    _decompress_in_place(folder)
    if stats:
        (folder / "stats.json").write_text(
            json.dumps(
                {
                    "total_tokens_written": tokens,
                    "total_duplicated_tokens": 0,
                    "total_tokens_skipped": 0,
                    "percentiles": {"50": int(np.median(lengths))},
                }
            )
        )
    return tokens


def _merged_index(folder: Path, leaves: Sequence[Path]) -> None:
    shards = []
    for leaf in leaves:
        rel = leaf.relative_to(folder).as_posix()
        for shard in json.loads((leaf / "index.json").read_text())["shards"]:
            shard = dict(shard)
            shard["raw_data"] = dict(shard["raw_data"], basename=f"{rel}/{shard['raw_data']['basename']}")
            if shard.get("zip_data"):
                shard["zip_data"] = dict(shard["zip_data"], basename=f"{rel}/{shard['zip_data']['basename']}")
            shards.append(shard)
    (folder / "index.json").write_text(json.dumps({"version": 2, "shards": shards}))


def write_published_tree(
    root: str | os.PathLike,
    sources: Mapping[str, Sequence[Sequence[int]]],
    *,
    vocab_size: int = 256_000,
    seed: int = 0,
    empty_sources: Sequence[str] = ("starcoder-sample",),
    size_limit: int | None = 1 << 14,
    merged: bool = True,
    id_ranges: Mapping[str, tuple[int, int]] | None = None,
    without_stats: Sequence[str] = (),
) -> dict[str, int]:
    """Write ``root`` (the ``train/`` folder of a download) and return leaf path (relative to it) -> tokens.

    ``sources``: source name -> one list of sample lengths per chunk folder (``chunk0``, ``chunk1``, ...).
    ``id_ranges``: source -> the range its ids are drawn from (to tell sources apart in batches);
    ``without_stats``: sources whose leaves get no stats.json (their tokens must be counted).
    """
    root = Path(root)
    tokens: dict[str, int] = {}
    all_leaves: list[Path] = []
    for s_number, (source, chunks) in enumerate(sources.items()):
        leaves = []
        for c_number, lengths in enumerate(chunks):
            leaf = root / source / f"chunk{c_number}{CHUNK_SUFFIX}"
            n = write_leaf(
                leaf,
                lengths,
                vocab_size=vocab_size,
                seed=seed * 1000 + s_number * 100 + c_number,
                name=f"{source}-{c_number}",
                size_limit=size_limit,
                stats=source not in without_stats,
                id_range=(id_ranges or {}).get(source),
            )
            tokens[leaf.relative_to(root).as_posix()] = n
            leaves.append(leaf)
        if merged:
            _merged_index(root / source, leaves)
        (root / source / "num_tokens.json").write_text(
            json.dumps({"num_tokens": sum(tokens[x.relative_to(root).as_posix()] for x in leaves)})
        )
        all_leaves += leaves
    for source in empty_sources:
        (root / source).mkdir(parents=True, exist_ok=True)
        (root / source / "num_tokens.json").write_text(json.dumps({"num_tokens": 123}))
    if merged:
        _merged_index(root, all_leaves)
    (root / "num_tokens.json").write_text(json.dumps({"num_tokens": sum(tokens.values())}))
    return tokens


def tree_digest(root: str | os.PathLike) -> dict[str, tuple[str, int]]:
    """Every file under ``root`` (links included, not followed) -> (sha256 of its bytes, its mode): equal digests
    before and after a step mean the step left the tree byte-identical."""
    out = {}
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = ("link:" + os.readlink(path), 0)
            else:
                out[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode)
    return out
