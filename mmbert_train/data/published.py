"""Pre-tokenized MDS trees as the mmBERT authors published them, read without touching the download.

The published data (jhu-clsp/mmBERT-decay-data, -midtraining-data, the three pre-training repos) is one folder per
SOURCE with the language mixture already sampled into it::

    train/
      index.json  num_tokens.json               # MERGED: lists every shard below again ("src/chunk0-.../shard.00000.mds")
      <source>/
        index.json  num_tokens.json             # merged over its chunk folders
        <chunk>-tokenized-chunked-8192-512-32-backfill-nodups/
          index.json  shard.00000.mds ...  stats.json
      starcoder-sample/num_tokens.json          # a source folder with no shards at all

A **leaf dataset** is a folder whose ``index.json`` lists shards in that folder; it becomes one Streaming stream.
A **merged index** lists only shards of its subfolders (basenames with a ``/``): it is recognised and not read, so
nothing is counted twice, but every shard it lists must belong to a leaf (else the leaf's index is missing).

Within a published source the leaves are sampled in proportion to their tokens (the published mixture, as
published): leaf d with ``n_d`` tokens gets ``share * n_d / sum_e n_e`` of the phase's tokens. ``n_d`` is the
leaf's ``stats.json`` ``total_tokens_written`` when that is consistent with the index (``samples <= n_d`` and
``4 n_d <= shard bytes``: at least one token per sample, 4 bytes per uint32 id), else it is counted from the shards
once and cached outside the download.

Why normalized indexes. The shards were written with zstd and decompressed afterwards: the repos hold only the raw
``shard.NNNNN.mds`` while every ``index.json`` still names ``compression: zstd`` and a ``zip_data`` entry. Given such
a folder as ``local`` with no remote, Streaming 0.13 (``Reader.set_up_local``) treats "raw present, zip absent" as
an inconsistent cache and DELETES the raw shard. So Streaming never sees a downloaded folder: each leaf gets a
folder in the cache (:func:`stream_folder`) holding a normalized ``index.json`` (``compression`` and ``zip_data``
cleared, everything else as published) and one symlink per shard pointing at the downloaded file. Streaming lists
the symlinks as present raw shards and reads through them; anything it might ever evict is a link, never the data.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mmbert_train.atomic import atomic_write_json, atomic_write_text

INDEX = "index.json"
STATS = "stats.json"
NUM_TOKENS = "num_tokens.json"
CACHE_ENV = "MMBERT_CACHE"
TOKENS_FILE = "tokens.json"  # token counts counted from shards, in the tree's cache folder
COUNTED = "counted from the shards"
FROM_STATS = "stats.json"


class PublishedDataError(ValueError):
    """A published tree that cannot be read as described; the message names the folder or file."""


# --------------------------------------------------------------------------------------------- the tree


@dataclass(frozen=True)
class LeafDataset:
    """One leaf MDS dataset of a published tree."""

    path: str  # relative to the tree's root, posix ("textbooks/chunk0-tokenized-..."; "." = the root itself)
    folder: Path  # absolute
    index: dict  # its index.json as published
    samples: int
    shard_bytes: int  # sum of the listed raw shard sizes

    @property
    def shard_names(self) -> list[str]:
        return [shard_basename(s) for s in self.index["shards"]]


@dataclass
class PublishedTree:
    """What :func:`scan_tree` found under a downloaded folder."""

    root: Path
    leaves: list[LeafDataset]  # sorted by path
    merged: list[str]  # folders whose index.json only repeats shards of subfolders
    empty: list[str]  # top-most folders holding no dataset (e.g. only num_tokens.json)


def shard_basename(shard: dict) -> str:
    """The raw shard file an index entry names (relative to the index's folder)."""
    raw = shard.get("raw_data") or {}
    name = raw.get("basename")
    if not isinstance(name, str) or not name:
        raise KeyError("raw_data.basename")
    return name


def read_index(path: Path) -> dict:
    """An MDS ``index.json``, checked for what we read: version 2 and a list of shards with raw basenames."""
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise PublishedDataError(f"{path}: missing") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise PublishedDataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(obj, dict) or obj.get("version") != 2 or not isinstance(obj.get("shards"), list):
        raise PublishedDataError(f"{path}: not an MDS v2 index (expected {{'version': 2, 'shards': [...]}})")
    for number, shard in enumerate(obj["shards"]):
        try:
            shard_basename(shard)
            int(shard["samples"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise PublishedDataError(
                f"{path}: shard {number} has no raw_data.basename / samples (an MDS v2 shard entry)"
            ) from None
    return obj


def _rel(root: Path, folder: Path) -> str:
    rel = folder.relative_to(root).as_posix()
    return rel or "."


def matches_glob(path: str, globs: Iterable[str]) -> bool:
    """A glob matches a dataset path, or a folder when it matches the folder or everything in it."""
    return any(fnmatch.fnmatchcase(path, g) or fnmatch.fnmatchcase(path + "/", g) for g in globs)


def scan_tree(root: str | os.PathLike) -> PublishedTree:
    """Every leaf dataset, merged index and data-less folder under ``root`` (hidden folders skipped).

    Raises :class:`PublishedDataError` for an index that mixes shards of its own folder with shards of
    subfolders, and for a merged index listing a shard that no leaf index lists.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise PublishedDataError(f"{root}: not a folder")
    leaves: list[LeafDataset] = []
    merged: dict[str, list[str]] = {}  # folder -> shard paths it lists, relative to root
    has_data: dict[Path, bool] = {}
    for dirpath, dirnames, filenames in os.walk(root, topdown=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = Path(dirpath)
        if INDEX not in filenames:
            continue
        index = read_index(folder / INDEX)
        names = [shard_basename(s) for s in index["shards"]]
        nested = [n for n in names if "/" in n]
        if nested and len(nested) < len(names):
            raise PublishedDataError(
                f"{folder / INDEX}: lists both shards of its own folder and of subfolders; expected a leaf "
                "index (shards here) or a merged one (shards below)"
            )
        rel = _rel(root, folder)
        if nested:
            prefix = "" if rel == "." else rel + "/"
            merged[rel] = [os.path.normpath(prefix + n).replace(os.sep, "/") for n in nested]
            continue
        shard_bytes = sum(int((s.get("raw_data") or {}).get("bytes", 0)) for s in index["shards"])
        samples = sum(int(s["samples"]) for s in index["shards"])
        leaves.append(LeafDataset(rel, folder, index, samples, shard_bytes))
    # which folders hold a leaf somewhere below
    for leaf in leaves:
        f = leaf.folder
        while True:
            has_data[f] = True
            if f == root:
                break
            f = f.parent
    empty: list[str] = []
    for dirpath, dirnames, _ in os.walk(root, topdown=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        keep = []
        for d in dirnames:
            sub = Path(dirpath) / d
            if has_data.get(sub):
                keep.append(d)
            else:
                empty.append(_rel(root, sub))  # report the top-most one, do not descend
        dirnames[:] = keep
    # a merged index only repeats shards of leaves
    leaf_shards = {
        (leaf.path + "/" if leaf.path != "." else "") + name for leaf in leaves for name in leaf.shard_names
    }
    for rel, listed in merged.items():
        orphans = [p for p in listed if p not in leaf_shards]
        if orphans:
            where = root / rel / INDEX if rel != "." else root / INDEX
            raise PublishedDataError(
                f"{where}: lists {len(orphans)} shard(s) that no leaf index.json lists, e.g. {orphans[0]!r}; "
                "the folder's own index.json is missing or incomplete (re-download it)"
            )
    return PublishedTree(root, sorted(leaves, key=lambda x: x.path), sorted(merged), sorted(empty))


def filter_tree(
    tree: PublishedTree, include: Sequence[str] | None = None, exclude: Sequence[str] = ()
) -> tuple[list[LeafDataset], list[str]]:
    """The leaves matching ``include`` (None = all) and no ``exclude`` glob, and the data-less folders no
    ``exclude`` glob matches (globs over paths relative to the root, as :func:`matches_glob` reads them)."""
    leaves = [
        leaf
        for leaf in tree.leaves
        if (include is None or matches_glob(leaf.path, include)) and not matches_glob(leaf.path, exclude)
    ]
    return leaves, [folder for folder in tree.empty if not matches_glob(folder, exclude)]


def select_leaves(
    tree: PublishedTree,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    where: str = "published source",
) -> list[LeafDataset]:
    """The leaves matching ``include`` (None = all) and no ``exclude`` glob (globs over paths relative to the
    root). A data-less folder that is not excluded is an error naming it."""
    chosen, empty = filter_tree(tree, include, exclude)
    if empty:
        shown = ", ".join(repr(e) for e in empty[:10])
        raise PublishedDataError(
            f"{where}: {tree.root} holds folder(s) with no MDS dataset: {shown} (only num_tokens.json or "
            "an unfinished download?); download them or add them to `exclude`"
        )
    if not chosen:
        raise PublishedDataError(
            f"{where}: no leaf MDS dataset under {tree.root}"
            + (f" matches include {list(include)} / exclude {list(exclude)}" if include or exclude else "")
        )
    return chosen


# -------------------------------------------------------------------------------------------- the cache


def cache_root(cache: str | os.PathLike | None = None) -> Path:
    """``cache``, else ``$MMBERT_CACHE``, else ``~/.cache/mmbert_train``."""
    if cache is None:
        cache = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mmbert_train"
    return Path(cache).expanduser().absolute()


def tree_cache(root: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """The cache folder of one downloaded tree: ``<cache>/published/<name>-<hash of its real path>``; refuses a
    cache inside the download (which may be read-only, and must stay as downloaded)."""
    real = os.path.realpath(root)
    base = cache_root(cache)
    real_base = os.path.realpath(base)
    if real_base == real or real_base.startswith(real.rstrip(os.sep) + os.sep):
        raise PublishedDataError(
            f"cache {base} is inside the downloaded folder {root}; set data.cache (or ${CACHE_ENV}) elsewhere"
        )
    digest = hashlib.sha1(real.encode()).hexdigest()[:12]
    return base / "published" / f"{Path(real).name}-{digest}"


def normalized_index(index: dict) -> dict:
    """The index Streaming reads: ``compression`` and ``zip_data`` cleared on every shard, the rest unchanged."""
    out = copy.deepcopy(index)
    for shard in out["shards"]:
        shard["compression"] = None
        shard["zip_data"] = None
    return out


def _link(target: Path, link: Path) -> None:
    """``link`` -> ``target``, replaced atomically when it points elsewhere (safe with ranks doing it at once)."""
    if os.path.islink(link) and os.readlink(link) == str(target):
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def stream_folder(leaf: LeafDataset, tree_cache_dir: Path) -> Path:
    """The folder Streaming reads for ``leaf``: a normalized index.json + one symlink per shard into the download.

    Written only where it differs (each rank may call this; every write is atomic)."""
    out = tree_cache_dir / "streams" / ("_root" if leaf.path == "." else leaf.path)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(normalized_index(leaf.index), sort_keys=True)
    index_file = out / INDEX
    if not index_file.is_file() or index_file.read_text() != text:
        atomic_write_text(index_file, text)
    for name in leaf.shard_names:
        link = out / name
        link.parent.mkdir(parents=True, exist_ok=True)
        _link(leaf.folder / name, link)
    return out


# ----------------------------------------------------------------------------------------- token counts


def _index_key(leaf: LeafDataset) -> str:
    return hashlib.sha1(json.dumps(leaf.index, sort_keys=True).encode()).hexdigest()


def stats_tokens(leaf: LeafDataset) -> int | None:
    """``total_tokens_written`` of the leaf's stats.json when present and consistent with its index, else None."""
    try:
        stats = json.loads((leaf.folder / STATS).read_text())
        tokens = stats["total_tokens_written"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(tokens, bool) or not isinstance(tokens, int):
        return None
    if not leaf.samples <= tokens or (leaf.shard_bytes and 4 * tokens > leaf.shard_bytes):
        return None
    return tokens


def count_tokens(leaf: LeafDataset) -> int:
    """Tokens of a leaf, counted from its shards (read in place, nothing written)."""
    from mmbert_train.data.mds import iter_input_ids

    return sum(len(ids) for ids in iter_input_ids(leaf.folder))


def leaf_tokens(leaves: Sequence[LeafDataset], tree_cache_dir: Path) -> dict[str, tuple[int, str]]:
    """Leaf path -> (tokens, where they come from): stats.json, else counted once and cached in
    ``<tree cache>/tokens.json`` (keyed by a hash of the leaf's index, so a re-downloaded leaf is recounted)."""
    cache_file = tree_cache_dir / TOKENS_FILE
    try:
        cached = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cached = {}
    out: dict[str, tuple[int, str]] = {}
    changed = False
    for leaf in leaves:
        tokens = stats_tokens(leaf)
        if tokens is not None:
            out[leaf.path] = (tokens, FROM_STATS)
            continue
        key = _index_key(leaf)
        hit = cached.get(leaf.path)
        if isinstance(hit, dict) and hit.get("index") == key and isinstance(hit.get("tokens"), int):
            out[leaf.path] = (hit["tokens"], COUNTED)
            continue
        tokens = count_tokens(leaf)
        cached[leaf.path] = {"index": key, "tokens": tokens}
        out[leaf.path] = (tokens, COUNTED)
        changed = True
    if changed:
        tree_cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache_file, cached)
    return out


# --------------------------------------------------------------------------------------- a source's plan


@dataclass(frozen=True)
class PublishedStream:
    """One leaf of a published source in a phase."""

    path: str  # relative to the source's folder
    local: str  # the normalized folder Streaming reads
    tokens: int
    samples: int
    tokens_from: str  # FROM_STATS or COUNTED


def plan_source(
    path: str | os.PathLike,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    cache: str | os.PathLike | None = None,
    where: str = "published source",
) -> list[PublishedStream]:
    """The streams of one published source (leaves with samples), with their tokens and normalized folders."""
    tree = scan_tree(path)
    leaves = [leaf for leaf in select_leaves(tree, include, exclude, where) if leaf.samples > 0]
    if not leaves:
        raise PublishedDataError(f"{where}: every selected dataset under {path} has zero samples")
    cache_dir = tree_cache(tree.root, cache)
    counts = leaf_tokens(leaves, cache_dir)
    out = []
    for leaf in leaves:
        tokens, how = counts[leaf.path]
        if tokens <= 0:
            continue
        out.append(PublishedStream(leaf.path, str(stream_folder(leaf, cache_dir)), tokens, leaf.samples, how))
    return out


def unused_settings(data_cfg) -> list[str]:
    """Keys of a ``data:`` section that no source reads: ``languages`` / ``tau`` / ``eval`` languages when every
    source is published (e.g. inherited from a recipe that had per-language data)."""
    if not data_cfg.sources or any(s.kind != "published" for s in data_cfg.sources.values()):
        return []
    unused = [k for k in ("languages", "tau") if getattr(data_cfg, k) is not None]
    if data_cfg.eval.languages is not None or data_cfg.eval.groups:
        unused.append("eval.languages / eval.groups (no held-out split is published)")
    return unused
