"""Validate the memory planner (`mmbert_train.memory`) against the measured peak of real training steps on CPU.

Each configuration runs in its own child process (fp32, one thread, sdpa attention, StableAdamW): build the model
and the optimizer, then two training steps (forward, backward, optimizer step; the second runs with the optimizer state allocated) on one packed microbatch, holding
the model's output through the backward as Composer does for its metrics. The measured peak is the child's peak
resident memory (``ru_maxrss``) minus its resident memory just before the model was built. glibc is told to serve
every allocation above 64 KiB with its own mapping (``MALLOC_MMAP_THRESHOLD_``), so a freed tensor leaves the
resident set at once and the resident peak is the peak of live tensors, not of the allocator's caches.

Prints one JSON document: per configuration the estimate, the measurement and estimate / measured.

    python bench/memory_planner.py                    # the table in docs/benchmarks.md
    python bench/memory_planner.py --quick            # three small configurations
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmbert_train.processes import pythonpath_with  # noqa: E402

# (name, model overrides on top of the base below, rows, seq_len, max documents per row)
BASE = dict(
    vocab_size=16384,
    hidden_size=256,
    intermediate_size=384,
    num_hidden_layers=6,
    num_attention_heads=4,
    max_position_embeddings=4096,
    attn_backend="sdpa",
)
CONFIGS = [
    ("6L x 256, 4 x 512", {}, 4, 512, 1),
    ("6L x 256, 16 x 512", {}, 16, 512, 3),
    ("6L x 256, 4 x 1024", {}, 4, 1024, 2),
    ("6L x 256, 8 x 1024", {}, 8, 1024, 1),
    ("6L x 256, 2 x 2048", {}, 2, 2048, 1),
    ("6L x 256, 1 x 4096", {}, 1, 4096, 1),
    (
        "4L x 384, 8 x 1024, vocab 32k",
        {
            "hidden_size": 384,
            "intermediate_size": 576,
            "num_hidden_layers": 4,
            "num_attention_heads": 6,
            "vocab_size": 32768,
        },
        8,
        1024,
        2,
    ),
    (
        "4L x 384, 2 x 1024, vocab 64k",
        {
            "hidden_size": 384,
            "intermediate_size": 576,
            "num_hidden_layers": 4,
            "num_attention_heads": 6,
            "vocab_size": 65536,
        },
        2,
        1024,
        1,
    ),
    ("12L x 256, 4 x 2048, dropout", {"num_hidden_layers": 12, "attn_out_dropout": 0.1}, 4, 2048, 2),
]
QUICK = [0, 3, 6]
MASK_RATIO = 0.3


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def measure(config: dict, rows: int, seq_len: int, max_docs: int, steps: int = 2, seed: int = 0) -> dict:
    """In this process: the peak bytes of ``steps`` training steps above the resident set before the model."""
    import torch

    from mmbert_train.config import OptimizerConfig
    from mmbert_train.memory import StepShape
    from mmbert_train.model import MMBertForMaskedLM, ModelConfig
    from mmbert_train.train.optim import build_optimizer
    from mmbert_train.train.testing import packed_batches

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model_config = ModelConfig(**config)
    (batch,) = packed_batches(
        1, rows, seq_len, model_config.vocab_size, seed=seed, max_docs=max_docs, mask_ratio=MASK_RATIO
    )
    shape = StepShape.from_batch(batch)
    baseline, baseline_peak = _rss_bytes(), _max_rss_bytes()
    model = MMBertForMaskedLM(model_config).train()
    optimizer = build_optimizer(model, OptimizerConfig(), on_cuda=False)
    after_model = _rss_bytes()
    for _ in range(steps):
        out = model(batch["input_ids"], batch["attention_mask"], batch["labels"], doc_lens=batch["doc_lens"])
        out.loss.backward()
        del out
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {
        "measured_peak": _max_rss_bytes() - baseline,
        "measured_model": after_model - baseline,
        "baseline_slack": baseline_peak - baseline,  # > 0: an earlier peak may hide part of the step's
        "tokens": shape.tokens,
        "masked": shape.masked,
        "doc_len": shape.doc_len,
        "bucket_padding": shape.bucket_padding,
    }


def estimate(config: dict, result: dict, head: str = "chunked") -> dict:
    from mmbert_train.memory import StepShape, TrainingSetup, estimate_step_memory
    from mmbert_train.model import ModelConfig

    shape = StepShape(
        tokens=result["tokens"],
        masked=result["masked"],
        doc_len=result["doc_len"],
        bucket_padding=result["bucket_padding"],
    )
    chunk = ModelConfig(**config).loss_chunk_size  # the model measured in the child uses its own chunk size
    setup = TrainingSetup(
        precision="fp32", backend=config.get("attn_backend", "sdpa"), head=head, chunk_size=int(chunk)
    )
    est = estimate_step_memory(ModelConfig(**config), shape, setup)
    return {"estimate": est.peak, "dominant": est.dominant, "terms": est.terms}


def run_child(config: dict, rows: int, seq_len: int, max_docs: int) -> dict:
    env = dict(
        os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1", PYTHONPATH=pythonpath_with(ROOT)
    )
    job = json.dumps({"config": config, "rows": rows, "seq_len": seq_len, "max_docs": max_docs})
    proc = subprocess.run(
        [sys.executable, __file__, "--child", job], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measurement child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def validate(indices: list[int], head: str = "chunked") -> list[dict]:
    rows_out = []
    for index in indices:
        name, overrides, rows, seq_len, max_docs = CONFIGS[index]
        config = {**BASE, **overrides}
        result = run_child(config, rows, seq_len, max_docs)
        result.update(estimate(config, result, head))
        result["ratio"] = result["estimate"] / result["measured_peak"]
        rows_out.append({"name": name, "rows": rows, "seq_len": seq_len, **result})
    return rows_out


def format_table(results: list[dict]) -> str:
    lines = [
        "| configuration | tokens | masked | measured peak | estimate | estimate / measured | dominant term |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['tokens']} | {r['masked']} | {r['measured_peak'] / 2**20:.0f} MiB | "
            f"{r['estimate'] / 2**20:.0f} MiB | {r['ratio']:.3f} | {r['dominant']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="three small configurations")
    parser.add_argument("--only", type=int, nargs="+", help="indices into CONFIGS")
    parser.add_argument("--table", action="store_true", help="also print a Markdown table")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(measure(job["config"], job["rows"], job["seq_len"], job["max_docs"])))
        return 0
    indices = args.only or (QUICK if args.quick else list(range(len(CONFIGS))))
    results = validate(indices)
    import torch

    report = {"machine": platform.node(), "torch": torch.__version__, "results": results}
    print(json.dumps(report, indent=1))
    if args.table:
        print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
