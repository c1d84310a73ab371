"""Raw text -> tokenized MDS shards per (source, language) + ``manifest.json`` (Contract 2).

Pipeline, for every (source, language) group:

1. Each input file (or Hugging Face dataset shard) is a *part*, tokenized by one worker process into its own
   small MDS datasets ``train/`` and ``heldout/`` under ``MDS/<source>/.<language>.partial/parts/NNNNN``
   (written under a temporary name, renamed when complete, so a resumed run reuses finished parts).
2. When all parts of a group are done, the main process merges them in file order into ``.partial/out/``
   (shards hard-linked into one numbered sequence, one ``index.json``, ``done.json``) and renames that folder
   to ``MDS/<source>/<language>/``. That rename is the commit point: a folder named ``<language>`` (without a
   leading dot) is always finished, and a rerun skips it. The parts are only read, so a merge killed halfway
   is simply redone.

Long documents: a document longer than :data:`data_prep.pieces.PIECE_CHARS` characters is encoded window by
window (:mod:`data_prep.pieces`), so a worker's memory is bounded by the window and the document's ids, not by
the tokenizer's per-token bookkeeping for the whole document; the ids are those of encoding it whole.

Safety: one run at a time per output folder (``MDS/.lock``, taken over when its holder has died); workers die
with the main process (:func:`mmbert_train.processes.die_with_parent`); a worker that dies (killed, out of
memory) stops the run with an error naming it and the file it was on, and the next run continues. Settings that
change the output (tokenizer fingerprint, ``max_seq_len``, ``heldout_fraction``; ``text_field`` per group) are
recorded in every group's ``done.json`` and a run with other values is refused.

Samples: every document becomes ``<bos> t_1 .. t_k <eos>`` when ``k <= max_seq_len - 2``; a longer one is cut into
consecutive pieces of ``max_seq_len - 2`` tokens, each wrapped in bos/eos, so no token is lost. Ids are uint32.

Held-out split: a document is held out when ``u(text) < heldout_fraction``, with ``u`` the first 8 bytes of
``blake2b(text)`` read as a fraction in [0, 1) (identical texts always land on the same side). When a group with
two or more documents would get none, the document with the smallest ``u`` is held out instead (a fraction of 0
turns the split off). Each part therefore keeps back its smallest-``u`` training document (the *candidate*)
until the merge decides, and a candidate that stays in training is written after the parts' shards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mmbert_train.atomic import atomic_write_json
from mmbert_train.data.manifest import COUNT_KEYS, MANIFEST_NAME, empty_counts, make_manifest
from mmbert_train.locks import LOCK_NAME, exclusive_lock

MDS_COLUMNS = {"input_ids": "ndarray:uint32"}
COMPRESSION = "zstd"
SHARD_SIZE_LIMIT = 1 << 26  # 64 MiB of uncompressed samples per shard (Streaming's default)
DONE_NAME = "done.json"
HELDOUT_DIR = "heldout"
ENCODE_BATCH_DOCS = 64
ENCODE_BATCH_CHARS = 1 << 19  # ... or fewer, so one batch's Encodings stay around 100 MB
KEEP_REASONS = 20  # skipped-record reasons kept per part and group (in done.json)
SHOW_REASONS = 5  # ... and printed per group


class PrepError(RuntimeError):
    """A problem with the input or output folder that stops the run; the message names the path."""


# ----------------------------------------------------------------------------------------------------------------
# Inputs: one part = one raw file or one shard of a Hugging Face dataset.


@dataclass(frozen=True)
class HFSpec:
    """A Hugging Face dataset streamed with ``datasets.load_dataset(name, config, split=..., streaming=True)``."""

    name: str
    config: str | None
    split: str


@dataclass(frozen=True)
class PartInput:
    path: str | None = None  # a raw file
    hf: HFSpec | None = None  # or a Hugging Face dataset ...
    hf_shard: int = 0  # ... shard index out of hf_num_shards
    hf_num_shards: int = 1

    def describe(self) -> str:
        if self.path is not None:
            return self.path
        return f"{self.hf.name}[{self.hf.config or ''}:{self.hf.split}] shard {self.hf_shard}/{self.hf_num_shards}"


def _load_hf(spec: HFSpec):
    import datasets

    try:
        if Path(spec.name).is_dir() and (Path(spec.name) / "state.json").exists():
            # a folder written by Dataset.save_to_disk
            return datasets.load_from_disk(spec.name).to_iterable_dataset()
        return datasets.load_dataset(spec.name, spec.config, split=spec.split, streaming=True)
    except Exception as exc:  # not found, offline, unknown config or split, ...
        raise PrepError(
            f"cannot open the Hugging Face dataset {spec.name!r} (config {spec.config!r}, split {spec.split!r}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def hf_num_shards(spec: HFSpec, text_field: str = "text") -> int:
    """How many shards (usually files) the dataset streams from; checks the text column when it is known."""
    ds = _load_hf(spec)
    columns = getattr(ds, "column_names", None)
    if columns and text_field not in columns:
        raise PrepError(
            f"Hugging Face dataset {spec.name!r} has no column {text_field!r} (columns: {', '.join(columns)}); "
            "set --text-field"
        )
    return int(getattr(ds, "num_shards", getattr(ds, "n_shards", 1)) or 1) if hasattr(ds, "shard") else 1


def _read_hf(part: PartInput, text_field: str) -> Iterator[tuple[int | None, str | None, str | None]]:
    from data_prep.readers import check_text

    ds = _load_hf(part.hf)
    if part.hf_num_shards > 1:
        ds = ds.shard(num_shards=part.hf_num_shards, index=part.hf_shard)
    rows = with_field = 0
    for row, record in enumerate(ds, start=1):
        rows += 1
        if text_field not in record:
            if rows == 1:
                first_keys = ", ".join(map(repr, record))
            yield row, None, f"missing text field {text_field!r}"
            continue
        with_field += 1
        text = record[text_field]
        reason = check_text(text, text_field)
        yield row, (None if reason else text), reason
    if rows and not with_field:
        raise PrepError(
            f"{part.describe()}: none of its {rows} rows has the text field {text_field!r} (the first one has "
            f"{first_keys or 'no fields'}); set --text-field"
        )


def _records(part: PartInput, text_field: str):
    if part.path is not None:
        from data_prep.readers import read_documents

        return read_documents(Path(part.path), text_field)
    return _read_hf(part, text_field)


# ----------------------------------------------------------------------------------------------------------------
# Tokenizing one part (runs in a worker process).


@dataclass(frozen=True)
class Settings:
    """Everything that changes what a group's MDS holds; recorded in ``done.json`` and checked on every rerun."""

    tokenizer: str  # as recorded in the manifest
    max_seq_len: int
    heldout_fraction: float
    text_field: str
    tokenizer_fingerprint: dict = field(default_factory=dict)  # data_prep.tokenizer.tokenizer_fingerprint

    def as_dict(self) -> dict:
        return asdict(self)


# The settings one output folder shares (a manifest describes one tokenizer, one length, one split) and the
# ones that only have to match when a finished group is rerun (sources may differ in their text field).
OUTPUT_SETTINGS = ("tokenizer", "tokenizer_fingerprint", "max_seq_len", "heldout_fraction")
GROUP_SETTINGS = ("text_field",)
FLAG_NAMES = {
    "tokenizer": "--tokenizer",
    "tokenizer_fingerprint": "tokenizer fingerprint",
    "max_seq_len": "--max-seq-len",
    "heldout_fraction": "--heldout-fraction",
    "text_field": "--text-field",
}


@dataclass
class PartResult:
    group: str
    index: int
    counts: dict = field(default_factory=empty_counts)
    reasons: list = field(default_factory=list)  # first skipped records: "file:line: reason"
    candidate_u: float | None = None  # smallest-u training document kept back, if any
    warnings: list = field(default_factory=list)  # e.g. an empty input file
    long_documents: int = 0  # documents encoded in pieces (data_prep.pieces)
    unmatched_joins: int = 0  # piece joins where the windows never agreed (ids may differ there)


def heldout_u(data: bytes) -> float:
    """The document's position in [0, 1): blake2b's first 8 bytes as a fraction of 2**64."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") / 2.0**64


def split_into_samples(ids: np.ndarray, max_seq_len: int, bos: int, eos: int) -> list[np.ndarray]:
    """``<bos> piece <eos>`` for consecutive pieces of at most ``max_seq_len - 2`` content tokens (uint32)."""
    room = max_seq_len - 2
    out = []
    for start in range(0, max(len(ids), 1), room):
        sample = np.empty(min(room, len(ids) - start) + 2, dtype=np.uint32)
        sample[0] = bos
        sample[1:-1] = ids[start : start + room]
        sample[-1] = eos
        out.append(sample)
    return out


_WORKER: dict = {}  # per-process state: the tokenizer, the progress queue


def _init_worker(tokenizer_json: str, bos: int, eos: int, queue=None, parent_pid: int | None = None) -> None:
    from tokenizers import Tokenizer

    if parent_pid is not None:  # a pool worker: exit when the main process dies, even by kill -9
        from mmbert_train.processes import die_with_parent

        die_with_parent(parent_pid)

    tok = Tokenizer.from_str(tokenizer_json)
    try:
        # Text that spells a special token ("<mask>") is ordinary text here, not a control token.
        tok.encode_special_tokens = True
    except AttributeError:  # tokenizers < 0.19
        pass
    _WORKER.update(tokenizer=tok, bos=bos, eos=eos, queue=queue)


def _mds_writer(out: Path):
    from streaming import MDSWriter

    return MDSWriter(out=str(out), columns=MDS_COLUMNS, compression=COMPRESSION, size_limit=SHARD_SIZE_LIMIT)


def _encode(texts: list[str]) -> list[np.ndarray]:
    tok = _WORKER["tokenizer"]
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return [np.asarray(e.ids, dtype=np.uint32) for e in encode(texts, add_special_tokens=False)]


def tokenize_part(
    group: str,
    index: int,
    part: PartInput,
    part_dir: str,
    settings: Settings,
    progress: Callable | None = None,
) -> PartResult:
    """Tokenize one part into ``part_dir/{train,heldout}`` (+ ``candidate.npy``); returns its counts.

    Writes under ``.NNNNN.tmp`` first; the finished folder is renamed to ``part_dir`` with ``part.json`` inside.
    """
    from data_prep.pieces import PIECE_CHARS, encode_in_pieces

    bos, eos = _WORKER["bos"], _WORKER["eos"]
    where = part.describe()
    queue = _WORKER.get("queue")
    if queue is not None:  # first thing: a worker killed from here on can be named with its input
        queue.put(("start", os.getpid(), where))
    final = Path(part_dir)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    result = PartResult(group, index)
    counts = result.counts
    candidate: tuple[float, list[np.ndarray]] | None = None
    if part.path is not None:
        from data_prep.readers import file_warnings

        result.warnings += file_warnings(Path(part.path))
    last_report = [time.monotonic(), 0, 0]  # time, documents, tokens not yet reported

    def report(docs: int, tokens: int, force: bool = False) -> None:
        last_report[1] += docs
        last_report[2] += tokens
        now = time.monotonic()
        if force or now - last_report[0] > 0.2:
            if progress is not None:
                progress(last_report[1], last_report[2])
            elif queue is not None:
                queue.put(("progress", last_report[1], last_report[2]))
            last_report[:] = [now, 0, 0]

    heldout = None  # most parts hold out nothing: open that writer on the first held-out document
    with _mds_writer(tmp / "train") as train:

        def write_train(samples: list[np.ndarray]) -> None:
            for sample in samples:
                train.write({"input_ids": sample})
                counts["samples"] += 1
                counts["tokens"] += len(sample)

        def flush(batch: list[tuple[str, float]]) -> None:
            nonlocal candidate, heldout
            batch_tokens = 0
            if len(batch) == 1 and len(batch[0][0]) > PIECE_CHARS:  # a long document: window by window
                ids, unmatched = encode_in_pieces(_WORKER["tokenizer"], batch[0][0], PIECE_CHARS)
                result.long_documents += 1
                result.unmatched_joins += unmatched
                encoded = [ids]
            else:
                encoded = _encode([text for text, _ in batch])
            batch[:] = [(None, u) for _, u in batch]  # drop the texts before the samples are built
            for (_, u), ids in zip(batch, encoded):
                samples = split_into_samples(ids, settings.max_seq_len, bos, eos)
                batch_tokens += len(ids)
                counts["documents"] += 1
                if u < settings.heldout_fraction:
                    counts["heldout_documents"] += 1
                    if heldout is None:
                        heldout = _mds_writer(tmp / HELDOUT_DIR)
                    for sample in samples:
                        heldout.write({"input_ids": sample})
                elif settings.heldout_fraction > 0 and (candidate is None or u < candidate[0]):
                    if candidate is not None:
                        write_train(candidate[1])
                    candidate = (u, samples)
                else:
                    write_train(samples)
            report(len(batch), batch_tokens)

        batch: list[tuple[str, float]] = []
        batch_chars = 0
        for line, text, reason in _records(part, settings.text_field):
            if text is not None:
                try:
                    u = heldout_u(text.encode("utf-8"))
                except UnicodeEncodeError as exc:  # a lone surrogate from a JSON \ud800 escape
                    text, reason = None, f"text is not valid Unicode ({exc.reason} at character {exc.start})"
            if text is None:
                counts["skipped"] += 1
                if len(result.reasons) < KEEP_REASONS:
                    result.reasons.append(f"{where}{'' if line is None else f':{line}'}: {reason}")
                continue
            if len(text) > PIECE_CHARS and batch:  # a long document goes alone; first encode those before it
                flush(batch)
                batch, batch_chars = [], 0
            batch.append((text, u))
            batch_chars += len(text)
            full = len(batch) >= ENCODE_BATCH_DOCS or batch_chars >= ENCODE_BATCH_CHARS
            if full or len(text) > PIECE_CHARS:
                flush(batch)
                batch, batch_chars = [], 0
        if batch:
            flush(batch)
        if heldout is not None:
            heldout.finish()
    report(0, 0, force=True)
    if candidate is not None:
        result.candidate_u = candidate[0]
        np.save(tmp / "candidate.npy", np.concatenate(candidate[1]))
        np.save(tmp / "candidate_lengths.npy", np.array([len(s) for s in candidate[1]], dtype=np.int64))
    atomic_write_json(tmp / "part.json", asdict(result))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    if queue is not None:
        queue.put(("end", os.getpid(), where))
    return result


def _run_part(args) -> PartResult:
    return tokenize_part(*args)


# ----------------------------------------------------------------------------------------------------------------
# Merging the parts of a group (main process).


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copyfile(src, dst)


def _move_shards(src: Path, dst: Path, shards: list[dict], keep_source: bool = True) -> None:
    """Put ``src``'s shards into ``dst``, renumbered after those already listed in ``shards`` (appended to).

    By default the source stays intact (hard links), so a merge that is killed halfway can simply be redone.
    """
    index_file = src / "index.json"
    if not index_file.exists():
        return
    for shard in json.loads(index_file.read_text())["shards"]:
        number = len(shards)
        zip_name = f"shard.{number:05}.mds.zstd"
        if keep_source:
            _link_or_copy(src / shard["zip_data"]["basename"], dst / zip_name)
        else:
            os.replace(src / shard["zip_data"]["basename"], dst / zip_name)
        shard["zip_data"]["basename"] = zip_name
        shard["raw_data"]["basename"] = f"shard.{number:05}.mds"
        shards.append(shard)


def _write_index(folder: Path, shards: list[dict]) -> None:
    if shards:
        atomic_write_json(folder / "index.json", {"version": 2, "shards": shards})


def _write_candidates(folder: Path, staging: Path, part_dirs: list[Path], shards: list[dict]) -> None:
    """Append the kept-back candidate documents of ``part_dirs`` (in order) to the dataset in ``folder``."""
    tail = staging / "tail"
    shutil.rmtree(tail, ignore_errors=True)
    with _mds_writer(tail) as writer:
        for part_dir in part_dirs:
            ids = np.load(part_dir / "candidate.npy")
            lengths = np.load(part_dir / "candidate_lengths.npy")
            for sample in np.split(ids, np.cumsum(lengths)[:-1]):
                writer.write({"input_ids": sample})
    _move_shards(tail, folder, shards, keep_source=False)
    shutil.rmtree(tail, ignore_errors=True)


def merge_group(staging: Path, final: Path, n_parts: int, settings: Settings, inputs: list) -> dict:
    """Merge finished parts into ``final`` (via ``staging/out``); returns the group's counts.

    The parts are only read, so a merge interrupted at any point is redone from scratch by the next run.
    """
    part_dirs = [staging / "parts" / f"{i:05}" for i in range(n_parts)]
    results = [json.loads((d / "part.json").read_text()) for d in part_dirs]
    counts = empty_counts()
    reasons, warnings = [], []
    long_documents = unmatched_joins = 0
    for r in results:
        for k in COUNT_KEYS:
            counts[k] += r["counts"][k]
        reasons += r["reasons"][: KEEP_REASONS - len(reasons)]
        warnings += r.get("warnings", [])
        long_documents += r.get("long_documents", 0)
        unmatched_joins += r.get("unmatched_joins", 0)
    with_candidate = [(r["candidate_u"], i) for i, r in enumerate(results) if r["candidate_u"] is not None]
    promoted = None
    if counts["heldout_documents"] == 0 and counts["documents"] >= 2 and with_candidate:
        promoted = min(with_candidate)[1]  # at least one held-out document: the smallest u overall
    out = staging / "out"
    shutil.rmtree(out, ignore_errors=True)
    (out / HELDOUT_DIR).mkdir(parents=True)
    train_shards: list[dict] = []
    heldout_shards: list[dict] = []
    for d in part_dirs:
        _move_shards(d / "train", out, train_shards)
        _move_shards(d / HELDOUT_DIR, out / HELDOUT_DIR, heldout_shards)
    keep = [part_dirs[i] for _, i in sorted(with_candidate, key=lambda c: c[1]) if i != promoted]
    if keep:
        _write_candidates(out, staging, keep, train_shards)
        for d in keep:
            lengths = np.load(d / "candidate_lengths.npy")
            counts["samples"] += len(lengths)
            counts["tokens"] += int(lengths.sum())
    if promoted is not None:
        _write_candidates(out / HELDOUT_DIR, staging, [part_dirs[promoted]], heldout_shards)
        counts["heldout_documents"] += 1
    _write_index(out, train_shards)
    _write_index(out / HELDOUT_DIR, heldout_shards)
    if not heldout_shards:
        (out / HELDOUT_DIR).rmdir()
    done = {**settings.as_dict(), "inputs": inputs, "counts": counts, "skipped_examples": reasons}
    done.update(warnings=warnings, long_documents=long_documents, unmatched_joins=unmatched_joins)
    atomic_write_json(out / DONE_NAME, done)
    os.replace(out, final)  # the commit point
    shutil.rmtree(staging, ignore_errors=True)
    return {"counts": counts, "reasons": reasons, "warnings": warnings, "unmatched_joins": unmatched_joins}


# ----------------------------------------------------------------------------------------------------------------
# The run: plan groups, skip finished ones, run parts in a pool, merge, write the manifest.


@dataclass
class GroupPlan:
    source: str
    language: str
    parts: list[PartInput]
    inputs: list  # fingerprint of the inputs: [path, size, mtime_ns] or the HF spec

    @property
    def key(self) -> str:
        return f"{self.source}/{self.language}"


def _file_fingerprint(path: Path) -> list:
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def plan_raw(raw_dir: str | Path) -> list[GroupPlan]:
    from data_prep.layout import discover_groups

    plans = []
    for g in discover_groups(raw_dir):
        parts = [PartInput(path=str(p)) for p in g.files]
        plans.append(GroupPlan(g.source, g.language, parts, [_file_fingerprint(p) for p in g.files]))
    return plans


def plan_hf(spec: HFSpec, source: str, language: str, text_field: str = "text") -> list[GroupPlan]:
    from mmbert_train.data.languages import check_language

    check_language(language, "--language")
    n = hf_num_shards(spec, text_field)
    parts = [PartInput(hf=spec, hf_shard=i, hf_num_shards=n) for i in range(n)]
    return [GroupPlan(source, language, parts, [asdict(spec), n])]


def read_done(mds_dir: Path) -> dict[tuple[str, str], dict]:
    """``done.json`` of every finished group under ``mds_dir``."""
    done = {}
    if not mds_dir.is_dir():
        return done
    for marker in sorted(mds_dir.glob(f"*/*/{DONE_NAME}")):
        lang_dir = marker.parent
        if lang_dir.name.startswith(".") or lang_dir.parent.name.startswith("."):
            continue
        done[(lang_dir.parent.name, lang_dir.name)] = json.loads(marker.read_text())
    return done


def write_manifest_from_done(mds_dir: Path, settings: Settings) -> dict:
    sources: dict = {}
    for (source, language), info in read_done(mds_dir).items():
        sources.setdefault(source, {})[language] = info["counts"]
    manifest = make_manifest(
        settings.tokenizer,
        settings.max_seq_len,
        sources,
        tokenizer_fingerprint=settings.tokenizer_fingerprint,
    )
    atomic_write_json(mds_dir / MANIFEST_NAME, manifest)
    return manifest


def _describe_setting(key: str, value, first: bool = True) -> str:
    """``--max-seq-len 8192`` (or ``8192`` when not ``first``); a fingerprint as its vocab size and hash."""
    if key == "tokenizer_fingerprint":
        what = "a tokenizer" if first else "one"
        return f"{what} of vocab size {value.get('vocab_size')}, sha256 {str(value.get('sha256'))[:12]}"
    return f"{FLAG_NAMES[key]} {value!r}" if first else repr(value)


def check_settings(
    done: dict, settings: Settings, mds_dir: Path, planned: set, log: Callable[[str], None] = print
) -> None:
    """Refuse a run whose settings differ from those the finished groups were made with.

    Output-wide settings (:data:`OUTPUT_SETTINGS`) must match every finished group; per-group ones
    (:data:`GROUP_SETTINGS`) only the finished groups this run would otherwise skip (``planned`` keys).
    """
    unverified = []
    for (source, language), info in done.items():
        keys = OUTPUT_SETTINGS + (GROUP_SETTINGS if (source, language) in planned else ())
        for key in keys:
            recorded, wanted = info.get(key), getattr(settings, key)
            if key == "tokenizer_fingerprint" and not recorded:
                unverified.append(f"{source}/{language}")  # made before fingerprints were recorded
                continue
            if json.loads(json.dumps(recorded)) == json.loads(json.dumps(wanted)):
                continue
            where = mds_dir / source / language
            if key in GROUP_SETTINGS:
                advice = f"delete {where} to redo it with the new value, or run with the recorded one"
            else:
                advice = (
                    "an output folder holds data of one tokenizer, --max-seq-len and --heldout-fraction; use "
                    f"another --output folder, or delete the finished groups under {mds_dir} to redo them"
                )
            changed = " (same name, other files)" if key == "tokenizer_fingerprint" else ""
            raise PrepError(
                f"{where}: already tokenized with {_describe_setting(key, recorded)}, not "
                f"{_describe_setting(key, wanted, first=False)}{changed}; refused: {advice}"
            )
    if unverified:
        log(
            f"note: {len(unverified)} finished group(s) ({', '.join(unverified[:3])}{', ...' * (len(unverified) > 3)}) "
            "record no tokenizer fingerprint (made by an older version); their tokenizer cannot be verified"
        )


def _prepare_staging(staging: Path, plan: GroupPlan, settings: Settings) -> list[int]:
    """Create or reuse ``staging``; return the indices of parts still to do."""
    plan_file = staging / "plan.json"
    wanted = {**settings.as_dict(), "inputs": plan.inputs}
    if staging.exists():
        try:
            same = json.loads(plan_file.read_text()) == json.loads(json.dumps(wanted))
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(staging)
    if not staging.exists():
        (staging / "parts").mkdir(parents=True)
        atomic_write_json(plan_file, wanted)
    for stale in (staging / "parts").glob(".*"):
        shutil.rmtree(stale, ignore_errors=True)  # parts a killed run left half-written
    return [i for i in range(len(plan.parts)) if not (staging / "parts" / f"{i:05}" / "part.json").exists()]


@dataclass
class RunSummary:
    groups_done: int = 0
    groups_skipped: int = 0
    documents: int = 0
    samples: int = 0
    tokens: int = 0
    skipped: int = 0
    heldout_documents: int = 0
    seconds: float = 0.0
    manifest: dict = field(default_factory=dict)


def run_tokenize(
    plans: list[GroupPlan],
    mds_dir: str | Path,
    tokenizer_name: str,
    *,
    max_seq_len: int = 8192,
    workers: int = 1,
    text_field: str = "text",
    heldout_fraction: float = 0.005,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> RunSummary:
    """Tokenize the planned groups into ``mds_dir`` (see the module docstring); returns the run's totals.

    Holds ``mds_dir/.lock`` for the whole run: a second run into the same folder is refused
    (:class:`mmbert_train.locks.LockHeldError`), a lock left by a dead run is taken over.
    """
    from data_prep.tokenizer import load_tokenizer, tokenizer_fingerprint

    if max_seq_len < 3:
        raise PrepError("--max-seq-len must be at least 3 (bos + one token + eos)")
    if not 0.0 <= heldout_fraction < 1.0:
        raise PrepError("--heldout-fraction must be in [0, 1)")
    mds_dir = Path(mds_dir)
    hf_tok = load_tokenizer(tokenizer_name)
    recorded = str(Path(tokenizer_name).resolve()) if Path(tokenizer_name).is_dir() else tokenizer_name
    settings = Settings(recorded, max_seq_len, heldout_fraction, text_field, tokenizer_fingerprint(hf_tok))
    mds_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(mds_dir / LOCK_NAME, command="mmbert prep tokenize", log=log):
        return _run_locked(plans, mds_dir, hf_tok, settings, workers=workers, progress=progress, log=log)


def _run_locked(plans, mds_dir: Path, hf_tok, settings: Settings, *, workers, progress, log) -> RunSummary:
    done = read_done(mds_dir)
    check_settings(done, settings, mds_dir, {(p.source, p.language) for p in plans}, log)

    start = time.monotonic()
    summary = RunSummary()
    todo: list[tuple[GroupPlan, Path, Path, list[int]]] = []
    for plan in plans:
        final = mds_dir / plan.source / plan.language
        if (plan.source, plan.language) in done:
            summary.groups_skipped += 1
            # a run killed between the commit rename and the clean-up leaves the staging folder behind
            shutil.rmtree(final.with_name(f".{plan.language}.partial"), ignore_errors=True)
            if done[(plan.source, plan.language)].get("inputs") != json.loads(json.dumps(plan.inputs)):
                log(f"note: {plan.key} is already done but its inputs changed; delete {final} to redo it")
            continue
        if final.exists():
            raise PrepError(
                f"{final} exists but has no {DONE_NAME}: not made by `mmbert prep tokenize`; move it away"
            )
        if not plan.parts:
            log(f"note: {plan.key} has no input files; skipped")
            continue
        staging = final.with_name(f".{plan.language}.partial")
        todo.append((plan, staging, final, _prepare_staging(staging, plan, settings)))

    tasks = [
        (plan.key, i, plan.parts[i], str(staging / "parts" / f"{i:05}"), settings)
        for plan, staging, _, missing in todo
        for i in missing
    ]
    remaining = {plan.key: len(missing) for plan, _, _, missing in todo}
    by_key = {plan.key: (plan, staging, final) for plan, staging, final, _ in todo}
    bar = _progress_bar(progress, total_groups=len(todo))

    def finish_group(key: str) -> None:
        plan, staging, final = by_key[key]
        merged = merge_group(staging, final, len(plan.parts), settings, plan.inputs)
        counts = merged["counts"]
        summary.groups_done += 1
        for k in ("documents", "samples", "tokens", "skipped", "heldout_documents"):
            setattr(summary, k, getattr(summary, k) + counts[k])
        for warning in merged["warnings"]:
            bar.write(f"warning: {key}: {warning}")
        if counts["skipped"]:
            shown = "\n".join(f"    {r}" for r in merged["reasons"][:SHOW_REASONS])
            bar.write(f"{key}: skipped {counts['skipped']} record(s); first ones:\n{shown}")
        if counts["documents"] == 0:
            bar.write(
                f"warning: {key}: no documents at all ({counts['skipped']} skipped record(s)); finished empty. "
                f"Check the files and --text-field {settings.text_field!r}, then delete {final} and rerun"
            )
        if merged["unmatched_joins"]:
            bar.write(
                f"warning: {key}: {merged['unmatched_joins']} join(s) of long documents tokenized in pieces "
                "found no agreement; a token or two around each may differ from encoding the document whole"
            )
        bar.group_done()

    for key, n in list(remaining.items()):
        if n == 0:  # every part survived an interrupted run: only the merge is left
            finish_group(key)

    tokenizer_json = hf_tok.backend_tokenizer.to_str()
    bos, eos = hf_tok.bos_token_id, hf_tok.eos_token_id
    workers = max(1, min(workers, len(tasks) or 1))
    # One core per worker, so --workers N uses N cores: no Rust thread pool inside a worker. Forked workers
    # inherit this; the caller's setting comes back afterwards.
    saved_parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        if workers == 1:
            _init_worker(tokenizer_json, bos, eos)
            for task in tasks:
                result = tokenize_part(*task, progress=bar.update)
                remaining[result.group] -= 1
                if remaining[result.group] == 0:
                    finish_group(result.group)
        else:
            _run_pool(tasks, workers, tokenizer_json, bos, eos, bar, remaining, finish_group)
    finally:
        if saved_parallelism is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved_parallelism
        bar.close()
        summary.manifest = write_manifest_from_done(mds_dir, settings)
    summary.seconds = time.monotonic() - start
    return summary


def _dead_worker_error(running: dict[int, str], exit_codes: dict[int, int | None]) -> PrepError:
    """The error for a pool whose worker died: which process, by which signal, on which input.

    ``exit_codes`` are the pool's workers after it shut down; the pool itself ends the survivors with SIGTERM,
    so the others are the ones that died first.
    """
    import signal

    lines = []
    for pid, code in sorted(exit_codes.items()):
        if code is None or code == 0 or code == -signal.SIGTERM:
            continue
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = "unknown signal"
            how = f"was killed by signal {-code} ({name}"
            how += ": kill -9, or the out-of-memory killer)" if -code == signal.SIGKILL else ")"
        else:
            how = f"exited with code {code}"
        where = f" while tokenizing {running[pid]}" if pid in running else ""
        lines.append(f"worker process {pid} {how}{where}")
    what = "; ".join(lines) or "a worker process died abruptly (killed, or out of memory)"
    return PrepError(
        f"{what}. The run stopped; finished groups and parts are kept, rerun the same command to continue"
    )


def _run_pool(tasks, workers, tokenizer_json, bos, eos, bar, remaining, finish_group) -> None:
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    progress_queue = ctx.Queue()
    running: dict[int, str] = {}  # worker pid -> the input it is on

    def drain() -> None:
        while True:
            try:
                kind, *rest = progress_queue.get_nowait()
            except (queue_mod.Empty, OSError, ValueError):
                return
            if kind == "progress":
                bar.update(*rest)
            elif kind == "start":
                running[rest[0]] = rest[1]
            else:
                running.pop(rest[0], None)

    def run(pool) -> bool:
        """Submit everything and handle results; False when a worker died (the pool is broken)."""
        pending = {pool.submit(_run_part, task) for task in tasks}
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                drain()
                for future in finished:
                    try:
                        result = future.result()  # re-raises a worker's error (bad file, full disk) here
                    except BrokenProcessPool:
                        return False
                    remaining[result.group] -= 1
                    if remaining[result.group] == 0:
                        finish_group(result.group)
            return True
        finally:
            for future in pending:
                future.cancel()

    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(tokenizer_json, bos, eos, progress_queue, os.getpid())) as pool:  # fmt: skip
        ok = run(pool)
        processes = dict(getattr(pool, "_processes", None) or {})  # private, read only for exit codes
    if not ok:  # the pool has shut down: its workers have exit codes now
        drain()
        raise _dead_worker_error(running, {pid: p.exitcode for pid, p in processes.items()})


class _Progress:
    """tqdm bar counting documents, with tokens/s and finished groups in the postfix (silent when disabled)."""

    def __init__(self, enabled: bool, total_groups: int):
        self.tokens = 0
        self.groups = 0
        self.total_groups = total_groups
        self.start = time.monotonic()
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            # a terminal redraws in place; a log file (CI) gets a line every 30 s instead of a flood
            interval = 0.5 if sys.stderr.isatty() else 30.0
            self.bar = tqdm(
                unit=" doc", desc="tokenize", dynamic_ncols=True, file=sys.stderr, mininterval=interval
            )

    def update(self, docs: int, tokens: int) -> None:
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(docs)
            self._postfix()

    def _postfix(self) -> None:
        rate = self.tokens / max(time.monotonic() - self.start, 1e-9)
        self.bar.set_postfix_str(
            f"{rate:,.0f} tok/s, groups {self.groups}/{self.total_groups}", refresh=False
        )

    def group_done(self) -> None:
        self.groups += 1
        if self.bar is not None:
            self._postfix()

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress_bar(enabled: bool, total_groups: int) -> _Progress:
    return _Progress(enabled, total_groups)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mmbert prep tokenize",
        description="Tokenize RAW/<source>/<language>/ (or a Hugging Face dataset) into MDS shards + manifest.json.",
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="raw corpus folder RAW/<source>/<language>/<files>")
    src.add_argument("--hf-dataset", help="Hugging Face dataset id or local folder, streamed with `datasets`")
    parser.add_argument("--hf-config", default=None, help="dataset config (e.g. FineWeb2's rus_Cyrl)")
    parser.add_argument("--hf-split", default="train", help="dataset split (default: train)")
    parser.add_argument("--source", help="source name for --hf-dataset (output MDS/<source>/<language>/)")
    parser.add_argument("--language", help="language id for --hf-dataset (e.g. rus or rus_Cyrl)")
    parser.add_argument("--output", required=True, help="MDS output folder")
    parser.add_argument("--tokenizer", required=True, help="Hugging Face tokenizer id or local folder")
    parser.add_argument(
        "--max-seq-len", type=int, default=8192, help="longest sample incl. bos/eos (default 8192)"
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)"
    )
    parser.add_argument("--text-field", default="text", help="JSON/parquet/dataset field with the text")
    parser.add_argument("--heldout-fraction", type=float, default=0.005, help="share of documents held out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.hf_dataset and not (args.source and args.language):
        parser.error("--hf-dataset needs --source and --language")
    if args.input and (args.source or args.language):
        parser.error("--source/--language go with --hf-dataset; with --input they come from the folder names")
    if args.hf_dataset:
        spec = HFSpec(args.hf_dataset, args.hf_config, args.hf_split)
        plans = plan_hf(spec, args.source, args.language, args.text_field)
    else:
        plans = plan_raw(args.input)
    summary = run_tokenize(
        plans,
        args.output,
        args.tokenizer,
        max_seq_len=args.max_seq_len,
        workers=args.workers,
        text_field=args.text_field,
        heldout_fraction=args.heldout_fraction,
        progress=not args.no_progress,
    )
    rate = summary.tokens / max(summary.seconds, 1e-9)
    print(
        f"tokenized {summary.groups_done} group(s) ({summary.groups_skipped} already done): "
        f"{summary.documents:,} documents ({summary.heldout_documents:,} held out), {summary.samples:,} samples, "
        f"{summary.tokens:,} tokens, {summary.skipped:,} skipped records in {summary.seconds:.1f}s "
        f"({rate:,.0f} tok/s) -> {Path(args.output) / MANIFEST_NAME}"
    )
    return 0
