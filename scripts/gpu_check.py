"""`make gpu-check`: everything of the GPU path on one CUDA GPU, offline, in at most 8 minutes.

Parts, each in its own child process with its own time limit (a crash or an out-of-memory error in one part is
reported and the others still run):

- ``parity``: attention backends flash / flex / sdpa in bf16 autocast, forward and backward, at mmBERT-base
  shapes (hidden 768, 12 heads, window 128; one global and two local layers) on packed rows of varying document
  lengths, against the fp32 eager reference: relative L2 error of the logits, the loss and every gradient.
- ``train_1024`` / ``train_8192``: a compiled training run of mmBERT-base (256k vocabulary) through the Composer
  trainer (`mmbert_train.train.trainer.build_trainer`) for a few dozen steps on synthetic MDS data, recipe
  recipes/smoke/smoke_gpu.yaml with overrides: tokens/s and MFU after the warm-up steps, peak memory
  (``torch.cuda.max_memory_allocated``) against the memory planner's estimate (`mmbert_train.memory`), the number
  of graphs compiled after warm-up (should be 0) and of graph breaks (torch._dynamo's counters).
- ``throughput``: the GPU half of bench/model_throughput.py (ours vs transformers' ModernBERT, bf16).
- ``gpu_tests``: the ``gpu``-marked tests (pytest -m gpu).

Writes ``OUT/gpu_check.json`` (one document: versions, every part's status, figures and reason when skipped)
and prints a short table (also ``OUT/gpu_check.md``). Exit status 1 when a part failed.

``--dry-run`` runs the same parts on the CPU at tiny shapes (fp32 training, a few steps, 128 / 256 tokens; parity
in bf16 autocast), skipping only what needs CUDA (flash-attn, compiled FlexAttention, the GPU benchmark itself),
so that the one GPU run works first time; it trains without torch.compile unless ``--compile`` is given.

    python scripts/gpu_check.py                          # on a CUDA machine with this project installed
    bash scripts/gpu_device.sh                           # on the lent GPU machines (carried wheels)
    python scripts/gpu_check.py --dry-run --out build/gpu_check_dry
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTS = ("parity", "train_1024", "train_8192", "throughput", "gpu_tests")
# Seconds per part on the GPU (the sum stays under the 8-minute budget with start-up to spare).
LIMITS = {"parity": 60, "train_1024": 130, "train_8192": 130, "throughput": 90, "gpu_tests": 60}
DRY_LIMITS = {"parity": 300, "train_1024": 600, "train_8192": 600, "throughput": 300, "gpu_tests": 300}
BUDGET_S = 480
SMOKE_RECIPE = ROOT / "recipes" / "smoke" / "smoke_gpu.yaml"
SYNTHETIC_LANGUAGES = ("eng", "fra")
SYNTHETIC_SOURCE = "udhr"  # the source name recipes/smoke/_common.yaml reads
PARITY_TOLERANCE = 0.05  # relative L2 error of bf16 vs the fp32 reference (logits, loss, every gradient)


# ---------------------------------------------------------------------------------------------------- shapes


def train_settings(length_key: str, dry_run: bool) -> dict[str, Any]:
    """Rows, steps and warm-up of one training part (real: 1024 / 8192 tokens; dry run: 128 / 256)."""
    if dry_run:
        seq_len = {"train_1024": 128, "train_8192": 256}[length_key]
        return {"seq_len": seq_len, "rows": 4, "steps": 6, "warmup": 3, "preset": "tiny", "vocab": 4096}
    seq_len = {"train_1024": 1024, "train_8192": 8192}[length_key]
    rows = {1024: 32, 8192: 4}[seq_len]  # 32k tokens per step either way
    return {
        "seq_len": seq_len,
        "rows": rows,
        "steps": 36,
        "warmup": 12,
        "preset": "mmbert-base",
        "vocab": 256000,
    }


def parity_settings(dry_run: bool) -> dict[str, Any]:
    if dry_run:
        return dict(hidden_size=64, num_attention_heads=4, intermediate_size=96, local_attention=16,
                    vocab_size=512, rows=2, seq_len=128)  # fmt: skip
    return dict(hidden_size=768, num_attention_heads=12, intermediate_size=1152, local_attention=128,
                vocab_size=4096, rows=8, seq_len=1024)  # fmt: skip


# ---------------------------------------------------------------------------------------------- data


def write_synthetic_mds(
    root: Path, max_seq_len: int, tokens_per_language: int, vocab: int, seed: int = 0
) -> Path:
    """MDS folders ``root/udhr/<lang>/`` (+ ``heldout/``) of random documents (log-normal lengths up to
    ``max_seq_len``, bos ... eos) and ``root/manifest.json``, as `mmbert prep tokenize` writes them."""
    import numpy as np
    from streaming import MDSWriter

    from mmbert_train.atomic import atomic_write_json
    from mmbert_train.data.manifest import make_manifest

    rng = np.random.default_rng(seed)
    counts: dict[str, dict[str, int]] = {}
    for lang in SYNTHETIC_LANGUAGES:
        stats = {"documents": 0, "samples": 0, "tokens": 0, "skipped": 0, "heldout_documents": 0}
        for sub, budget in (("", tokens_per_language), ("heldout", 4 * max_seq_len)):
            written = 0
            with MDSWriter(out=str(root / SYNTHETIC_SOURCE / lang / sub), columns={"input_ids": "ndarray:uint32"},
                           compression=None, size_limit=1 << 24) as writer:  # fmt: skip
                while written < budget:
                    n = int(np.clip(rng.lognormal(np.log(max_seq_len / 3), 0.8), 8, max_seq_len))
                    doc = np.concatenate([[2], rng.integers(5, vocab, size=n - 2), [1]]).astype(np.uint32)
                    writer.write({"input_ids": doc})
                    written += n
                    stats["documents"] += 1
                    if sub:
                        stats["heldout_documents"] += 1
                    else:
                        stats["samples"] += 1
                        stats["tokens"] += n
        counts[lang] = stats
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        root / "manifest.json", make_manifest("synthetic", max_seq_len, {SYNTHETIC_SOURCE: counts})
    )
    return root


# ------------------------------------------------------------------------------------------------ parity


def _rel(a, b) -> float:
    import torch

    a, b = a.detach().double(), b.detach().double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-30))


def run_parity(dry_run: bool) -> dict[str, Any]:
    import torch

    from mmbert_train.model import MMBertForMaskedLM, ModelConfig
    from mmbert_train.model.attention import flash_attn_available
    from mmbert_train.train.testing import packed_batches

    s = parity_settings(dry_run)
    device = "cpu" if dry_run else "cuda"
    base = ModelConfig(
        vocab_size=s["vocab_size"], hidden_size=s["hidden_size"], intermediate_size=s["intermediate_size"],
        num_hidden_layers=3, num_attention_heads=s["num_attention_heads"], local_attention=s["local_attention"],
        max_position_embeddings=max(1024, s["seq_len"]), attn_backend="eager",
    )  # fmt: skip
    (batch,) = packed_batches(1, s["rows"], s["seq_len"], base.vocab_size, seed=3, max_docs=4)
    batch = {k: v.to(device) for k, v in batch.items()}
    torch.manual_seed(0)
    reference = MMBertForMaskedLM(base).to(device)
    state = reference.state_dict()

    def run(model, autocast: bool):
        model.zero_grad(set_to_none=True)
        inputs = (batch["input_ids"], batch["attention_mask"])
        # two autocast regions: autocast caches its bf16 weight copies per region, and copies made under
        # no_grad would carry no gradient into the training forward
        with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
            logits = model(*inputs, doc_lens=batch["doc_lens"]).logits
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
            loss = model(*inputs, batch["labels"], doc_lens=batch["doc_lens"]).loss
        loss.backward()
        real = batch["attention_mask"].bool()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        return logits[real].float(), loss.detach().float(), grads

    ref_logits, ref_loss, ref_grads = run(reference, autocast=False)
    results: dict[str, Any] = {"shapes": s, "tolerance": PARITY_TOLERANCE, "reference": "eager fp32"}
    failed = []
    for backend in ("flash", "flex", "sdpa"):
        reason = None
        if backend == "flash" and dry_run:
            reason = "flash-attn runs on CUDA only"
        elif backend == "flash" and not flash_attn_available():
            reason = "flash-attn is not installed"
        elif backend == "flex" and dry_run:
            reason = "FlexAttention is compiled on CUDA only (its CPU path is a reference, without backward on torch >= 2.9)"
        if reason:
            results[backend] = {"status": "skipped", "reason": reason}
            continue
        model = MMBertForMaskedLM(ModelConfig(**{**base.to_dict(), "attn_backend": backend})).to(device)
        model.load_state_dict(state)
        logits, loss, grads = run(model, autocast=True)  # bf16 autocast on the CPU too in a dry run
        grad_errors = {n: _rel(grads[n], ref_grads[n]) for n in ref_grads}
        worst = max(grad_errors, key=grad_errors.__getitem__)
        entry = {
            "dtype": "bf16 autocast",
            "logits_rel_err": _rel(logits, ref_logits),
            "loss_rel_err": _rel(loss, ref_loss),
            "grad_rel_err_max": grad_errors[worst],
            "grad_worst": worst,
        }
        ok = (
            max(entry["logits_rel_err"], entry["loss_rel_err"], entry["grad_rel_err_max"]) <= PARITY_TOLERANCE
        )
        entry["status"] = "ok" if ok else "failed"
        if not ok:
            failed.append(backend)
        results[backend] = entry
    results["status"] = "failed" if failed else "ok"
    if failed:
        results["reason"] = f"backends above tolerance {PARITY_TOLERANCE}: {', '.join(failed)}"
    return results


# ------------------------------------------------------------------------------------------------- training


def _dynamo_counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }


def run_training(part: str, dry_run: bool, out: Path, compile_model: bool = True) -> dict[str, Any]:
    import torch
    from composer.core import Callback, Event

    from mmbert_train.config import load_recipe
    from mmbert_train.memory import StepShape, TrainingSetup, estimate_step_memory, format_bytes
    from mmbert_train.model.attention import flash_attn_available
    from mmbert_train.train.trainer import build_trainer

    s = train_settings(part, dry_run)
    data_root = out / f"mds_{s['seq_len']}"
    if not (data_root / "manifest.json").exists():
        tokens = s["rows"] * s["seq_len"] * (s["steps"] + 4)
        write_synthetic_mds(data_root, s["seq_len"], tokens // len(SYNTHETIC_LANGUAGES) + 1, s["vocab"])
    languages = out / "languages.txt"
    languages.write_text("\n".join(SYNTHETIC_LANGUAGES) + "\n")
    overrides = [
        f"model.preset={s['preset']}",
        f"model.vocab_size={s['vocab']}",
        f"model.max_position_embeddings={max(8192, s['seq_len'])}",
        f"data.root={data_root}",
        f"data.languages={languages}",
        f"data.max_seq_len={s['seq_len']}",
        "data.num_workers=1",
        "data.batch_warmup.start_batch_size=0",
        "data.batch_warmup.tokens=0",
        f"trainer.max_duration={s['steps']}ba",
        f"trainer.global_batch_size={s['rows']}",
        f"trainer.device_microbatch_size={s['rows']}",
        f"trainer.compile={str(compile_model).lower()}",
        "trainer.save_folder=null",
        "trainer.autoresume=false",
        "trainer.progress_bar=false",
        "trainer.log_to_console=false",
        "scheduler.t_warmup=5ba",
        "eval.enabled=false",
        "logging.wandb.enabled=false",
    ]
    if dry_run:
        overrides += ["trainer.device=cpu", "trainer.precision=fp32", "model.attn_backend=sdpa"]
    recipe = load_recipe(SMOKE_RECIPE, overrides)

    class StepClock(Callback):
        """Wall time, tokens and FLOPs of every batch; dynamo's counters at the end of warm-up."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.tokens: list[int] = []
            self.flops: list[float] = []
            self.after_warmup: dict[str, int] | None = None
            self._start = 0.0

        def run_event(self, event, state, logger) -> None:
            if event == Event.BATCH_START:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self._start = time.perf_counter()
                if len(self.times) == s["warmup"]:
                    self.after_warmup = _dynamo_counts()
            elif event == Event.BATCH_END:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.times.append(time.perf_counter() - self._start)
                self.tokens.append(int(state.batch["attention_mask"].sum()))
                self.flops.append(float(state.model.flops_per_batch(state.batch)))

    clock = StepClock()
    rss_before = _rss_bytes()
    if not dry_run:
        torch.cuda.reset_peak_memory_stats()
    trainer = build_trainer(recipe, callbacks=[clock], loggers=[])
    trainer.fit()
    measured = torch.cuda.max_memory_allocated() if not dry_run else _max_rss_bytes() - rss_before
    end = _dynamo_counts()
    timed = slice(s["warmup"], None)
    seconds, tokens, flops = sum(clock.times[timed]), sum(clock.tokens[timed]), sum(clock.flops[timed])
    peak_flops = None
    if not dry_run:
        from composer.callbacks.speed_monitor import get_gpu_flops_available

        peak_flops = get_gpu_flops_available(trainer.state)

    backend = "sdpa" if dry_run else ("flash" if flash_attn_available() else "flex")
    config = recipe.model_config
    head = "chunked" if hasattr(config, "loss_chunk_size") else "plain"
    setup = TrainingSetup(
        precision="fp32" if dry_run else "amp_bf16", backend=backend, head=head,
        chunk_size=int(getattr(config, "loss_chunk_size", 4096) or 4096),
    )  # fmt: skip
    shape = StepShape.packed(s["rows"], s["seq_len"], recipe.data.mask_ratio)
    estimate = estimate_step_memory(config, shape, setup)
    result = {
        "status": "ok",
        "settings": s,
        "backend": backend,
        "steps": len(clock.times),
        "tokens_per_s": tokens / seconds if seconds else None,
        "mfu": (flops / seconds / peak_flops) if (peak_flops and seconds) else None,
        "first_step_s": clock.times[0] if clock.times else None,
        "steady_step_s": seconds / max(1, len(clock.times[timed])),
        "peak_memory": measured,
        "peak_memory_kind": "CPU resident set above the start (dry run)"
        if dry_run
        else "torch.cuda.max_memory_allocated",
        "planner_estimate": estimate.peak,
        "planner_dominant": estimate.dominant,
        "planner_vs_measured": estimate.peak / measured if measured > 0 else None,
        "graphs_total": end["graphs"],
        "graphs_after_warmup": end["graphs"] - (clock.after_warmup or end)["graphs"],
        "graph_breaks": end["graph_breaks"],
        "summary": f"peak {format_bytes(measured)} vs planner {format_bytes(estimate.peak)}",
    }
    if result["graphs_after_warmup"]:
        result["status"] = "failed"
        result["reason"] = (
            f"{result['graphs_after_warmup']} graphs compiled after {s['warmup']} warm-up steps"
        )
    return result


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------------------------------- throughput, tests


def run_throughput(dry_run: bool, limit: float) -> dict[str, Any]:
    """bench/model_throughput.py's GPU half (dry run: its argument handling and JSON, with the GPU part off)."""
    flags = ["--no-cpu", "--no-gpu"] if dry_run else ["--no-cpu", "--gpu", "--repeats", "3"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "model_throughput.py"), *flags],
        capture_output=True, text=True, timeout=limit, cwd=ROOT, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        return {"status": "failed", "reason": f"exit status {proc.returncode}: {proc.stderr[-2000:]}"}
    report = json.loads(proc.stdout[proc.stdout.index("{") :])
    gpu = report.get("gpu")
    if isinstance(gpu, str):
        return {"status": "skipped", "reason": gpu, "bench": report}
    return {"status": "ok", "bench": gpu}


def run_gpu_tests(out: Path, limit: float) -> dict[str, Any]:
    junit = out / "gpu_tests.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={junit}"],
        capture_output=True, text=True, timeout=limit, cwd=ROOT, check=False,
    )  # fmt: skip
    if proc.returncode == 5:  # nothing collected
        return {"status": "ok", "tests": 0, "failures": 0, "skipped": 0, "reason": "no gpu-marked tests"}
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    result: dict[str, Any] = {"status": "ok" if proc.returncode == 0 else "failed", **counts}
    if counts["skipped"] == counts["tests"] and counts["tests"]:
        result.update(status="skipped", reason="every gpu test skipped (no CUDA device)")
    if proc.returncode not in (0, 5):
        result["reason"] = proc.stdout[-2000:]
    return result


# ----------------------------------------------------------------------------------------------- driver


def versions() -> dict[str, str | None]:
    from importlib import metadata

    found = {}
    for dist in ("torch", "transformers", "mosaicml", "mosaicml-streaming", "flash-attn", "torch-optimi"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def run_part(part: str, dry_run: bool, out: Path, limit: float, compile_model: bool = True) -> dict[str, Any]:
    if part == "parity":
        return run_parity(dry_run)
    if part.startswith("train_"):
        return run_training(part, dry_run, out, compile_model)
    if part == "throughput":
        return run_throughput(dry_run, limit)
    if part == "gpu_tests":
        return run_gpu_tests(out, limit)
    raise ValueError(f"unknown part {part!r}; choose from {', '.join(PARTS)}")


def _child(part: str, dry_run: bool, out: Path, limit: float, compile_model: bool) -> dict[str, Any]:
    """Run ``part`` in a child process (its own CUDA context and memory peak), at most ``limit`` seconds."""
    result_file = out / f"part_{part}.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--part", part, "--out", str(out), "--limit", str(limit)]
    if dry_run:
        cmd.append("--dry-run")
    cmd.append("--compile" if compile_model else "--no-compile")
    from mmbert_train.processes import pythonpath_with

    # On the GPU machines the carried wheels are on PYTHONPATH (scripts/gpu_device.sh): prepend, never replace.
    env = dict(os.environ, PYTHONPATH=pythonpath_with(ROOT), WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"did not finish within {limit:.0f} s", "seconds": limit}
    seconds = time.monotonic() - start
    if proc.returncode != 0 or not result_file.exists():
        tail = (proc.stderr or proc.stdout)[-3000:]
        return {"status": "failed", "reason": f"exit status {proc.returncode}: {tail}", "seconds": seconds}
    result = json.loads(result_file.read_text())
    result["seconds"] = seconds
    return result


def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return "-"
    if kind == "bytes":
        return f"{value / 2**30:.2f} GiB"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def format_table(report: dict[str, Any]) -> str:
    lines = ["| part | status | figures | seconds |", "|---|---|---|---:|"]
    for part, r in report["parts"].items():
        if r["status"] == "skipped" or (r["status"] == "failed" and "reason" in r):
            figures = r.get("reason", "").splitlines()[0][:150] if r.get("reason") else ""
        elif part == "parity":
            figures = "; ".join(
                f"{b}: " + (f"logits {_fmt(r[b]['logits_rel_err'])}, grads {_fmt(r[b]['grad_rel_err_max'])}"
                            if r[b]["status"] != "skipped" else f"skipped ({r[b]['reason']})")
                for b in ("flash", "flex", "sdpa") if b in r
            )  # fmt: skip
        elif part.startswith("train_"):
            figures = (
                f"{_fmt(r.get('tokens_per_s'))} tok/s, MFU {_fmt(r.get('mfu'))}, peak {_fmt(r.get('peak_memory'), 'bytes')}"
                f" vs planner {_fmt(r.get('planner_estimate'), 'bytes')}, graphs after warm-up "
                f"{r.get('graphs_after_warmup')}, graph breaks {r.get('graph_breaks')}"
            )
        elif part == "gpu_tests":
            figures = f"{r.get('tests')} tests, {r.get('failures')} failed, {r.get('skipped')} skipped"
        else:
            figures = json.dumps(r.get("bench"))[:150]
        lines.append(f"| {part} | {r['status']} | {figures} | {_fmt(r.get('seconds'))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny shapes: everything that needs no CUDA"
    )
    parser.add_argument(
        "--out", default="build/gpu_check", help="folder for gpu_check.json (default %(default)s)"
    )
    parser.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts")
    parser.add_argument(
        "--budget", type=float, default=BUDGET_S, help="seconds for all parts (GPU; default 480)"
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train with torch.compile (default: on the GPU yes, in a dry run no: inductor on CPU is slow)",
    )
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--limit", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compile is None:
        args.compile = not args.dry_run
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from mmbert_train.atomic import atomic_write_json, atomic_write_text

    if args.part:  # child: one part, result as JSON next to the report
        result = run_part(args.part, args.dry_run, out, args.limit, args.compile)
        atomic_write_json(out / f"part_{args.part}.json", result)
        return 0

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu-check: no CUDA device here; run it on a GPU machine, or use --dry-run on CPU",
            file=sys.stderr,
        )
        return 2
    limits = DRY_LIMITS if args.dry_run else LIMITS
    report: dict[str, Any] = {
        "mode": "dry-run (CPU)" if args.dry_run else "gpu",
        "device": "cpu" if args.dry_run else torch.cuda.get_device_name(),
        "machine": platform.node(),
        "versions": versions(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "compile": args.compile,
        "parts": {},
    }
    start = time.monotonic()
    for part in PARTS:
        if args.only and part not in args.only:
            report["parts"][part] = {"status": "skipped", "reason": "not selected (--only)"}
            continue
        left = args.budget - (time.monotonic() - start)
        if not args.dry_run and left < 20:
            report["parts"][part] = {
                "status": "skipped",
                "reason": f"time budget of {args.budget:.0f} s used up",
            }
            continue
        limit = limits[part] if args.dry_run else min(limits[part], left)
        print(f"gpu-check: {part} (at most {limit:.0f} s) ...", file=sys.stderr, flush=True)
        report["parts"][part] = _child(part, args.dry_run, out, limit, args.compile)
    report["seconds"] = time.monotonic() - start
    atomic_write_json(out / "gpu_check.json", report)
    table = format_table(report)
    atomic_write_text(out / "gpu_check.md", table + "\n")
    print(table)
    skipped = [
        f"{p} ({r['reason'].splitlines()[0]})" for p, r in report["parts"].items() if r["status"] == "skipped"
    ]
    if skipped:
        print("skipped: " + "; ".join(skipped))
    print(f"wrote {out / 'gpu_check.json'}")
    return 1 if any(r["status"] == "failed" for r in report["parts"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
