"""``mmbert prep stats MDS``: rebuild ``manifest.json`` from the MDS folders that are there.

Works on our own output and on pre-tokenized data laid out as ``MDS/<source>/<language>/`` (an ``index.json`` +
shards; ``heldout/`` optional). A tree in the published mmBERT layout (``train/<source>/<chunk>/``, merged indexes)
is recognised: its datasets' tokens are printed and no manifest is written into it (it is read as a ``kind:
published`` source, `mmbert_train.data.published`). The ``input_ids`` column may
be an MDS ``ndarray`` of any integer dtype (uint16, int32, uint32, int64, ...) or raw ``bytes`` of 4-byte ids
(int32 or uint32 - the same numbers for ids below 2**31).

Counts: ``samples`` and ``tokens`` are always recounted from the shards. ``documents``, ``skipped`` and
``heldout_documents`` come from ``done.json`` where ``mmbert prep tokenize`` wrote one; for foreign data, where
document boundaries are unknown, every sample counts as one document, ``heldout_documents`` is the number of
samples in ``heldout/`` and ``skipped`` is 0.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmbert_train.atomic import atomic_write_json
from mmbert_train.data.languages import check_language
from mmbert_train.data.manifest import MANIFEST_NAME, empty_counts, make_manifest
from mmbert_train.data.mds import MDSError, iter_input_ids
from mmbert_train.locks import LOCK_NAME, exclusive_lock


class StatsError(MDSError):
    """An MDS folder that cannot be counted; the message names the file."""


def count_dataset(folder: Path) -> tuple[int, int, int]:
    """(samples, tokens, longest sample) of the MDS dataset in ``folder``."""
    samples = tokens = longest = 0
    for ids in iter_input_ids(folder):
        samples += 1
        tokens += len(ids)
        longest = max(longest, len(ids))
    return samples, tokens, longest


def find_datasets(mds_dir: Path) -> list[tuple[str, str, Path]]:
    """``(source, language, folder)`` for every ``MDS/<source>/<language>/index.json``; hidden folders ignored."""
    found = []
    for index_file in sorted(mds_dir.glob("*/*/index.json")):
        folder = index_file.parent
        source, language = folder.parent.name, folder.name
        if source.startswith(".") or language.startswith("."):
            continue
        check_language(language, str(folder))
        found.append((source, language, folder))
    # finished groups of ours with no training samples have done.json but no index.json
    for marker in sorted(mds_dir.glob("*/*/done.json")):
        folder = marker.parent
        if not (folder / "index.json").exists() and not folder.name.startswith("."):
            found.append((folder.parent.name, check_language(folder.name, str(folder)), folder))
    return sorted(found)


def rebuild_manifest(
    mds_dir: str | Path, tokenizer: str | None = None, max_seq_len: int | None = None
) -> dict:
    """Recount every dataset under ``mds_dir`` and write ``manifest.json``; returns the manifest.

    Holds ``mds_dir/.lock`` like ``prep tokenize``, so it never counts a folder another run is writing.
    """
    mds_dir = Path(mds_dir)
    if not mds_dir.is_dir():
        raise StatsError(f"{mds_dir}: no such folder")
    with exclusive_lock(mds_dir / LOCK_NAME, command="mmbert prep stats"):
        return _rebuild_locked(mds_dir, tokenizer, max_seq_len)


def _rebuild_locked(mds_dir: Path, tokenizer: str | None, max_seq_len: int | None) -> dict:
    datasets = find_datasets(mds_dir)
    if not datasets:
        raise StatsError(f"{mds_dir}: no MDS/<source>/<language>/index.json found")
    sources: dict = {}
    tokenizers, lengths, fingerprints, longest = set(), set(), set(), 0
    foreign = False  # some dataset has no done.json
    for source, language, folder in datasets:
        counts = empty_counts()
        done_file = folder / "done.json"
        done = json.loads(done_file.read_text()) if done_file.exists() else None
        if (folder / "index.json").exists():
            counts["samples"], counts["tokens"], long = count_dataset(folder)
            longest = max(longest, long)
        heldout_samples = (
            count_dataset(folder / "heldout")[0] if (folder / "heldout" / "index.json").exists() else 0
        )
        if done is not None:
            for key in ("documents", "skipped", "heldout_documents"):
                counts[key] = done["counts"][key]
            tokenizers.add(done["tokenizer"])
            lengths.add(done["max_seq_len"])
            fingerprints.add(json.dumps(done.get("tokenizer_fingerprint") or None, sort_keys=True))
        else:
            foreign = True
            counts["documents"] = counts["samples"] + heldout_samples
            counts["heldout_documents"] = heldout_samples
        sources.setdefault(source, {})[language] = counts
    recorded = set(tokenizers)
    previous = mds_dir / MANIFEST_NAME
    if tokenizer is None and not tokenizers and previous.exists():
        try:  # foreign data described by an earlier `stats --tokenizer ...`: keep its tokenizer
            tokenizers.add(json.loads(previous.read_text())["tokenizer"])
        except (ValueError, KeyError, TypeError):
            pass
    if tokenizer is None:
        if len(tokenizers) != 1:
            found = ", ".join(sorted(tokenizers)) or "none recorded"
            raise StatsError(
                f"{mds_dir}: pass --tokenizer (tokenizers recorded in done.json files or manifest.json: {found})"
            )
        tokenizer = tokenizers.pop()
    if max_seq_len is None:
        max_seq_len = lengths.pop() if len(lengths) == 1 else longest
    # a fingerprint only when every dataset is ours, all recorded the same one and the tokenizer keeps its name
    same = len(fingerprints) == 1 and recorded == {tokenizer} and len(fingerprints) and not foreign
    fingerprint = json.loads(next(iter(fingerprints))) if same else None
    manifest = make_manifest(tokenizer, max_seq_len, sources, tokenizer_fingerprint=fingerprint)
    atomic_write_json(mds_dir / MANIFEST_NAME, manifest)
    return manifest


def is_published_layout(mds_dir: Path) -> bool:
    """A tree in the published mmBERT layout (merged index.json at the top or per source, leaves nested deeper)
    rather than ours (``MDS/<source>/<language>/``)."""
    return (mds_dir / "index.json").is_file() or any(mds_dir.glob("*/index.json"))


def published_stats(mds_dir: Path, cache: str | None = None) -> int:
    """Print tokens and samples per leaf dataset of a published tree; nothing is written under ``mds_dir``
    (token counts missing from stats.json are cached outside it)."""
    from mmbert_train.data.published import PublishedDataError, leaf_tokens, scan_tree, tree_cache

    try:
        tree = scan_tree(mds_dir)
        if not tree.leaves:
            raise PublishedDataError(f"{mds_dir}: no MDS dataset (index.json with shards) found")
        counts = leaf_tokens(tree.leaves, tree_cache(tree.root, cache))
    except (PublishedDataError, MDSError) as err:
        raise StatsError(str(err)) from None
    total = sum(t for t, _ in counts.values())
    for leaf in tree.leaves:
        tokens, how = counts[leaf.path]
        print(f"{leaf.path}\t{leaf.samples}\t{tokens}\t{how}")
    if tree.empty:
        print(f"folders without data: {', '.join(tree.empty)}")
    print(
        f"{len(tree.leaves)} dataset(s), {total:,} tokens (published layout: no manifest.json written; "
        "train on it with a `kind: published` source)"
    )
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mmbert prep stats",
        description="Rebuild MDS/manifest.json by counting the MDS/<source>/<language>/ datasets there.",
    )
    parser.add_argument("mds", help="MDS folder (holds <source>/<language>/index.json)")
    parser.add_argument(
        "--tokenizer",
        help="tokenizer id/folder to record (default: from done.json files, else the old manifest)",
    )
    parser.add_argument(
        "--max-seq-len", type=int, help="record this (default: from done.json, else longest sample)"
    )
    parser.add_argument(
        "--cache", help="published layout: where counted tokens are cached (default $MMBERT_CACHE)"
    )
    args = parser.parse_args(argv)
    if is_published_layout(Path(args.mds)):
        return published_stats(Path(args.mds), args.cache)
    manifest = rebuild_manifest(args.mds, args.tokenizer, args.max_seq_len)
    n_groups = sum(len(langs) for langs in manifest["sources"].values())
    tokens = sum(c["tokens"] for langs in manifest["sources"].values() for c in langs.values())
    print(f"{n_groups} dataset(s), {tokens:,} tokens -> {Path(args.mds) / MANIFEST_NAME}")
    return 0
