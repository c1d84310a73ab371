"""Loader throughput: tokens/s of the full phase loader vs the raw StreamingDataset read of the same shards.

    python bench/loader_throughput.py [--data MDS_ROOT] [--tokens 4000000] [--max-seq-len 1024] [--repeat 3]

Baseline ("raw"): iterate ``StreamingDataset`` over the phase's streams through a DataLoader in blocks of
``--block-samples`` (what the loader reads), counting tokens. Ours ("loader"): the training DataSpec of
:func:`mmbert_train.data.loader.build_train_dataloader` (read -> cut -> best-fit pack -> 80/10/10 mask), counting
real (non-padding) tokens. Both run with ``--num-workers`` reader processes (default 0: everything in this one
process, i.e. the cost per process). Runs alternate raw / loader and the best of ``--repeat`` is kept.

Without ``--data`` it writes synthetic shards (random token ids below 256000, sample lengths log-normal around
``--mean-len`` and at most ``--max-seq-len``, 3 languages with different mean lengths) into a temp folder.
Prints one JSON object; ``ratio`` = raw tokens/s / loader tokens/s (target < 2), ``loader_tokens_per_s``
(target >= 200k per process).

Scale (``--scale``): start-up time, memory and tokens/s of the full loader with many streams, each measured in a
fresh process (= one rank)::

    python bench/loader_throughput.py --scale [--streams 10 100 1000 2500] [--published-leaves 300]

``--streams N``: N tiny MDS datasets (one shard of ``--stream-samples`` samples each) as N Streaming streams with
equal proportions. ``--published-leaves M``: a tree in the published mmBERT layout with M leaf datasets
(`mmbert_train.data.testing.write_published_tree`), read as one ``kind: published`` source (discovery, token
counts, normalized index folders: `mmbert_train.data.published`). Per run: ``plan_s`` (published: scanning the
tree and writing the normalized folders), ``startup_s`` (StreamingDataset construction + first batch),
``tokens_per_s`` over ``--scale-samples`` raw samples (after the first batch), ``rss_mb`` (peak resident memory of
the process) and ``shm_mb`` (Streaming's shared memory in /dev/shm at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

VOCAB = 256_000


def write_synthetic(root: Path, tokens: int, mean_len: int, max_len: int, seed: int = 0) -> Path:
    from streaming import MDSWriter

    rng = np.random.default_rng(seed)
    langs = {"fra": mean_len, "deu": mean_len * 2, "swh": max(8, mean_len // 3)}
    counts = {}
    for lang, mean in langs.items():
        written = samples = 0
        with MDSWriter(
            out=str(root / "web" / lang), columns={"input_ids": "ndarray:uint32"}, compression="zstd"
        ) as w:
            while written < tokens // len(langs):
                n = int(np.clip(rng.lognormal(np.log(mean), 0.7), 3, max_len))
                ids = rng.integers(5, VOCAB, size=n, dtype=np.uint32)
                ids[0], ids[-1] = 2, 1
                w.write({"input_ids": ids})
                written += n
                samples += 1
        counts[lang] = {
            "documents": samples,
            "samples": samples,
            "tokens": written,
            "skipped": 0,
            "heldout_documents": 0,
        }
    manifest = {"tokenizer": "synthetic", "max_seq_len": max_len, "sources": {"web": counts}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def data_config(root: Path, args):
    from mmbert_train.data.manifest import load_manifest
    from mmbert_train.data.spec import DataConfig, SourceConfig

    manifest = load_manifest(root)
    sources = {name: SourceConfig() for name in manifest["sources"]}
    languages = sorted({folder.split("_")[0] for src in manifest["sources"].values() for folder in src})
    return DataConfig(
        root=str(root), languages=languages, tau=0.7, sources=sources, max_seq_len=args.max_seq_len,
        mask_ratio=0.3, num_workers=args.num_workers,
    )  # fmt: skip


def time_raw(root: Path, args) -> tuple[float, int]:
    from streaming import StreamingDataset
    from torch.utils.data import DataLoader

    from mmbert_train.data.loader import _block_of_samples
    from mmbert_train.data.sampling import build_phase_plan

    plan = build_phase_plan(data_config(root, args))
    ds = StreamingDataset(
        streams=plan.streams(), batch_size=args.block_samples, shuffle=True, shuffle_seed=21
    )
    loader = DataLoader(
        ds, batch_size=args.block_samples, num_workers=args.num_workers, collate_fn=_block_of_samples
    )
    start, tokens = time.perf_counter(), 0
    for block in loader:
        tokens += sum(len(s) for s in block)
    elapsed = time.perf_counter() - start
    del loader, ds
    return elapsed, tokens


def time_loader(root: Path, args) -> tuple[float, int, float]:
    from mmbert_train.train.dataloader import build_train_dataloader

    spec = build_train_dataloader(
        data_config(root, args), global_batch_size=args.batch_size, vocab_size=VOCAB,
        block_samples=args.block_samples, clean_shared_memory=False,
    )  # fmt: skip
    start, tokens, capacity = time.perf_counter(), 0, 0
    for batch in spec.dataloader:
        tokens += int(np.count_nonzero(batch["attention_mask"].numpy()))  # numpy: no torch thread pool
        capacity += batch["attention_mask"].numel()
    elapsed = time.perf_counter() - start
    del spec
    return elapsed, tokens, tokens / max(capacity, 1)


def write_streams(root: Path, n: int, samples: int, mean_len: int) -> list[Path]:
    from streaming import MDSWriter

    rng = np.random.default_rng(n)
    folders = []
    for i in range(n):
        out = root / f"s{i:05d}"
        with MDSWriter(out=str(out), columns={"input_ids": "ndarray:uint32"}) as w:
            for _ in range(samples):
                m = int(np.clip(rng.lognormal(np.log(mean_len), 0.5), 8, 4 * mean_len))
                w.write({"input_ids": rng.integers(5, VOCAB, size=m, dtype=np.uint32)})
        folders.append(out)
    return folders


def _shm_mb() -> float:
    try:
        return sum(e.stat().st_size for e in os.scandir("/dev/shm") if e.is_file()) / 2**20
    except OSError:
        return float("nan")


def scale_one(args) -> dict:
    """One measurement (run in its own process: memory is per rank)."""
    import resource

    from streaming import Stream
    from streaming.base.util import clean_stale_shared_memory

    from mmbert_train.data.loader import build_packed_dataset
    from mmbert_train.data.spec import DataConfig, SourceConfig

    tmp = Path(tempfile.mkdtemp(prefix="loader_scale_"))
    try:
        cfg = DataConfig(root=str(tmp), sources={"unused": SourceConfig()}, max_seq_len=args.max_seq_len, mask_ratio=0.3,
                         num_workers=args.num_workers, cache=str(tmp / "cache"))  # fmt: skip
        plan_s = 0.0
        if args.published_leaves:
            from mmbert_train.data.sampling import build_phase_plan
            from mmbert_train.data.testing import write_published_tree

            rng = np.random.default_rng(0)
            per_source = max(1, args.published_leaves // 10)
            sources, made = {}, 0
            while made < args.published_leaves:
                k = min(per_source, args.published_leaves - made)
                sources[f"source{len(sources):02d}-sampled-decay"] = [
                    np.clip(
                        rng.lognormal(np.log(args.mean_len), 0.5, args.stream_samples), 8, 4 * args.mean_len
                    )
                    .astype(int)
                    .tolist()
                    for _ in range(k)
                ]
                made += k
            write_published_tree(tmp / "train", sources, size_limit=None, empty_sources=())
            cfg.sources = {"pub": SourceConfig(name="pub", kind="published", path=str(tmp / "train"))}
            start = time.perf_counter()
            plan = build_phase_plan(cfg)
            plan_s = time.perf_counter() - start
            streams, n = plan.streams(), len(plan.entries)
        else:
            folders = write_streams(tmp / "streams", args.streams, args.stream_samples, args.mean_len)
            streams = [Stream(local=str(f), proportion=1.0 / len(folders)) for f in folders]
            n = len(folders)
        clean_stale_shared_memory()
        start = time.perf_counter()
        dataset = build_packed_dataset(
            cfg, global_batch_size=args.batch_size, vocab_size=VOCAB, block_samples=args.block_samples,
            streams=streams, epoch_size=args.scale_samples, clean_shared_memory=False, rank=0, world_size=1,
        )  # fmt: skip
        it = iter(dataset)
        first = next(it)
        startup = time.perf_counter() - start
        tokens, t0 = 0, time.perf_counter()
        for batch in it:
            tokens += int(np.count_nonzero(batch["attention_mask"].numpy()))
        elapsed = time.perf_counter() - t0
        del first
        return {
            "streams": n,
            "published": bool(args.published_leaves),
            "plan_s": round(plan_s, 2),
            "startup_s": round(startup, 2),
            "tokens_per_s": round(tokens / elapsed),
            "tokens": tokens,
            "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "shm_mb": round(_shm_mb(), 1),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def scale(args) -> None:
    import subprocess
    import sys

    runs = [["--streams", str(n)] for n in args.streams_list]
    if args.published_leaves:
        runs.append(["--published-leaves", str(args.published_leaves)])
    common = ["--max-seq-len", str(args.max_seq_len), "--batch-size", str(args.batch_size),
              "--block-samples", str(args.block_samples), "--num-workers", str(args.num_workers),
              "--stream-samples", str(args.stream_samples), "--mean-len", str(args.mean_len),
              "--scale-samples", str(args.scale_samples)]  # fmt: skip
    results = []
    for run in runs:
        out = subprocess.run(
            [sys.executable, __file__, "--scale-one", *run, *common],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode:
            raise SystemExit(out.stdout + out.stderr)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    base = next((r for r in results if not r["published"]), None)
    if base:
        for r in results:
            r["slowdown_vs_first"] = round(base["tokens_per_s"] / r["tokens_per_s"], 2)
    print(json.dumps({"runs": results, "machine": f"{platform.machine()} {os.cpu_count()} cpus"}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, help="an MDS root with manifest.json (default: synthetic shards)"
    )
    parser.add_argument("--tokens", type=int, default=4_000_000, help="synthetic corpus size")
    parser.add_argument("--mean-len", type=int, default=400, help="synthetic mean sample length")
    parser.add_argument("--max-seq-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64, help="rows per batch")
    parser.add_argument("--block-samples", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", action="store_true", help="the many-streams measurement (see above)")
    parser.add_argument("--scale-one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--streams", type=int, nargs="+", default=[10, 100, 1000, 2500], dest="streams_list")
    parser.add_argument("--published-leaves", type=int, default=0)
    parser.add_argument("--stream-samples", type=int, default=32, help="samples per tiny dataset")
    parser.add_argument("--scale-samples", type=int, default=20_000, help="raw samples read per scale run")
    args = parser.parse_args()
    if args.scale_one:
        args.streams = args.streams_list[0]
        print(json.dumps(scale_one(args)))
        return
    if args.scale:
        if args.published_leaves == 0 and "--published-leaves" not in os.sys.argv:
            args.published_leaves = 300
        scale(args)
        return

    tmp = Path(tempfile.mkdtemp(prefix="loader_bench_"))
    try:
        if args.data is None:
            base = write_synthetic(tmp / "data", args.tokens, args.mean_len, args.max_seq_len)
        else:
            base = args.data.resolve()
        # Streaming forbids two live datasets on one local folder: give each run its own path (a symlink)
        raw_runs, loader_runs = [], []
        for i in range(args.repeat):
            link_raw, link_loader = tmp / f"raw{i}", tmp / f"loader{i}"
            os.symlink(base, link_raw)
            os.symlink(base, link_loader)
            raw_runs.append(time_raw(link_raw, args))
            loader_runs.append(time_loader(link_loader, args))
        raw_s, raw_tokens = min(raw_runs)
        loader_s, loader_tokens, efficiency = min(loader_runs)
        raw_tps, loader_tps = raw_tokens / raw_s, loader_tokens / loader_s
        print(
            json.dumps(
                {
                    "data": "synthetic" if args.data is None else str(args.data),
                    "max_seq_len": args.max_seq_len,
                    "batch_rows": args.batch_size,
                    "block_samples": args.block_samples,
                    "num_workers": args.num_workers,
                    "raw_tokens_per_s": round(raw_tps),
                    "loader_tokens_per_s": round(loader_tps),
                    "ratio_raw_over_loader": round(raw_tps / loader_tps, 3),
                    "packing_efficiency": round(efficiency, 4),
                    "raw_tokens": raw_tokens,
                    "loader_tokens": loader_tokens,
                    "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}",
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
