"""Model throughput: our MMBertForMaskedLM vs transformers' ModernBertForMaskedLM, same weights, same batches.

Prints one JSON document. Every figure counts real (non-padding) tokens per second; ratios are ours / baseline,
measured in the same run with the models' steps interleaved (A, B, C, A, B, C, ...) so that machine noise hits
every contender alike, and the median step time is reported.

CPU (always):
  - training step (forward + backward + AdamW step) and inference (forward, full logits) tokens/s of ours (sdpa)
    vs transformers sdpa and transformers sdpa with ``sparse_prediction=True``, on (a) uniform-length batches and
    (b) variable-length batches (lengths uniform in 64..512), 30% of the tokens masked;
  - a model of local layers only: forward time at length L and 4L (local attention should cost ~linearly).
  - ``--compile``: training tokens/s of ours compiled with `compile_regions` (inductor) vs ours eager on packed
    batches (8 x 512, 1-15 documents per row, 30% masked, a new document layout every batch), interleaved after
    warm-up; also compile time, graphs and recompilations.
  - ``--head-memory``: one training step (forward + backward) at vocab 256,000, each contender in a fresh
    subprocess: peak RSS above the memory before the step, and the step time, for our chunked loss, our plain
    path (``return_logits=True``) and transformers' sparse head.
GPU (when CUDA is available; ``--gpu`` to force, ``--no-gpu`` to skip):
  - mmBERT-base bf16 training throughput and MFU (model FLOPs of the real tokens / peak) at sequence length 1024
    and 8192 for our ``flex`` and ``sdpa`` backends vs transformers' ModernBERT (sdpa, sparse prediction).
    Free of Composer: needs only torch, transformers, safetensors and this package.

    python bench/model_throughput.py                 # CPU part (+ GPU part if CUDA)
    python bench/model_throughput.py --quick         # fewer repetitions
    python bench/model_throughput.py --no-cpu --no-gpu --compile --head-memory
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmbert_train.model import MMBertForMaskedLM, ModelConfig  # noqa: E402

# ---- batches ----------------------------------------------------------------------------------------------------


def make_batch(lengths: list[int], vocab: int, mask_ratio: float, seed: int, device="cpu"):
    """Right-padded rows (one document each), ``mask_ratio`` of the real tokens labelled (and replaced by 4)."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), width), generator=gen)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    chosen = (torch.rand(ids.shape, generator=gen) < mask_ratio) & mask.bool()
    labels = torch.where(chosen, ids, -100)
    ids = ids.masked_fill(chosen, 4).masked_fill(mask == 0, 0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def real_tokens(batch) -> int:
    return int(batch["attention_mask"].sum())


# ---- models -----------------------------------------------------------------------------------------------------


def build_models(config: ModelConfig, backends: list[str], device, dtype=torch.float32, sparse_only=False):
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    torch.manual_seed(0)
    hf_config = ModernBertConfig(**config.to_hf_dict())
    reference = ModernBertForMaskedLM._from_config(hf_config, attn_implementation="sdpa")
    state = {k: v for k, v in reference.state_dict().items() if k != "decoder.weight"}
    models = {}
    for backend in backends:
        ours = MMBertForMaskedLM(ModelConfig(**{**config.to_dict(), "attn_backend": backend}))
        ours.load_state_dict(state)
        models[f"ours_{backend}"] = ours
    if not sparse_only:
        models["hf_sdpa"] = reference
    sparse = ModernBertForMaskedLM._from_config(
        ModernBertConfig(**{**config.to_hf_dict(), "sparse_prediction": True}), attn_implementation="sdpa"
    )
    sparse.load_state_dict(reference.state_dict())
    models["hf_sdpa_sparse"] = sparse
    for model in models.values():
        model.to(device=device, dtype=dtype)
    return models


def call(name: str, model, batch, with_labels: bool):
    labels = batch["labels"] if with_labels else None
    if name.startswith("ours"):
        return model(batch["input_ids"], batch["attention_mask"], labels)
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(
    models: dict, step_fns: dict, batches: list, repeats: int, device, warmup: int = 1, best=False
):
    """Median (or with ``best``, minimum) seconds per batch for each model, steps interleaved across models."""
    times = {name: [] for name in models}
    for rep in range(warmup + repeats):
        for name in models:
            sync(device)
            start = time.perf_counter()
            for batch in batches:
                step_fns[name](batch)
            sync(device)
            if rep >= warmup:
                times[name].append((time.perf_counter() - start) / len(batches))
    return {name: (min(t) if best else statistics.median(t)) for name, t in times.items()}


def train_step_fns(models: dict, autocast_dtype=None, device="cpu"):
    fns = {}
    for name, model in models.items():
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def step(batch, name=name, model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(
                torch.device(device).type, dtype=autocast_dtype, enabled=autocast_dtype is not None
            ):
                loss = call(name, model, batch, with_labels=True).loss
            loss.backward()
            opt.step()

        fns[name] = step
    return fns


def inference_fns(models: dict):
    fns = {}
    for name, model in models.items():
        model.eval()

        @torch.no_grad()
        def step(batch, name=name, model=model):
            call(name, model, batch, with_labels=False)

        fns[name] = step
    return fns


def ratios(tokens_per_s: dict, ours: str, baselines: list[str]) -> dict:
    return {f"{ours}/{b}": round(tokens_per_s[ours] / tokens_per_s[b], 3) for b in baselines}


# ---- CPU --------------------------------------------------------------------------------------------------------


def cpu_benchmark(args) -> dict:
    config = ModelConfig(
        vocab_size=32000,
        hidden_size=256,
        intermediate_size=384,
        num_hidden_layers=6,
        num_attention_heads=4,
        max_position_embeddings=1024,
        global_rope_theta=10000.0,
        local_rope_theta=10000.0,
    )
    models = build_models(config, ["sdpa"], "cpu")
    gen = torch.Generator().manual_seed(1)
    suites = {
        "uniform_512": [
            make_batch([512] * args.batch, config.vocab_size, 0.3, s) for s in range(args.batches)
        ],
        "variable_64_512": [
            make_batch(
                torch.randint(64, 513, (args.batch,), generator=gen).tolist(), config.vocab_size, 0.3, s
            )
            for s in range(args.batches)
        ],
    }
    results: dict = {"config": config.to_dict(), "batch_rows": args.batch, "threads": torch.get_num_threads()}
    for suite, batches in suites.items():
        tokens = statistics.mean(real_tokens(b) for b in batches)
        entry = {
            "real_tokens_per_batch": tokens,
            "padding_share": 1 - tokens / batches[0]["input_ids"].numel(),
        }
        for mode, fns in (("train", train_step_fns(models)), ("inference", inference_fns(models))):
            seconds = interleaved(models, fns, batches, args.repeats, "cpu", best=args.best)
            tps = {name: round(tokens / s, 1) for name, s in seconds.items()}
            best_hf = max(("hf_sdpa", "hf_sdpa_sparse"), key=lambda n: tps[n])
            entry[mode] = {
                "tokens_per_s": tps,
                "ratio": ratios(tps, "ours_sdpa", ["hf_sdpa", "hf_sdpa_sparse"]),
                "ratio_vs_faster_transformers": round(tps["ours_sdpa"] / tps[best_hf], 3),
            }
        results[suite] = entry
    results["local_only_scaling"] = local_scaling(args)
    return results


def local_scaling(args) -> dict:
    """Forward time of an encoder whose layers are all local (window 128), at length L and 4L."""
    config = ModelConfig(
        vocab_size=1000,
        hidden_size=256,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=8192,
        attn_backend="sdpa",
    )
    model = MMBertForMaskedLM(config).eval()
    for layer in model.model.layers:  # make layer 0 (always global in the architecture) local as well
        layer.attn.is_global = False
        layer.attn.window_half = config.window_half
    lengths = (args.local_length, 4 * args.local_length)
    batches = {n: torch.randint(5, 1000, (1, n)) for n in lengths}
    fns = {n: (lambda ids: lambda _: model.encode(ids))(batches[n]) for n in lengths}
    with torch.no_grad():
        seconds = interleaved({n: None for n in lengths}, fns, [None], args.repeats + 2, "cpu")
    short, long = lengths
    return {
        "lengths": list(lengths),
        "seconds": {str(n): round(seconds[n], 5) for n in lengths},
        "time_ratio_4L_over_L": round(seconds[long] / seconds[short], 3),
        "target": "<= 5.0",
    }


# ---- regional compilation (CPU) ---------------------------------------------------------------------------------


def compile_benchmark(args) -> dict:
    """Compiled (`compile_regions`, inductor) vs eager training steps of the same model on packed batches."""
    import copy

    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters

    from mmbert_train.model import compile_regions
    from mmbert_train.train.testing import packed_batches

    config = ModelConfig(
        vocab_size=32000,
        hidden_size=256,
        intermediate_size=384,
        num_hidden_layers=6,
        num_attention_heads=4,
        max_position_embeddings=1024,
        attn_backend="sdpa",
    )
    torch.manual_seed(0)
    eager = MMBertForMaskedLM(config)
    compiled = copy.deepcopy(eager)
    backend = CompileCounterWithBackend("inductor")
    compile_regions(compiled, backend=backend)
    warmup = packed_batches(3, args.batch, 512, config.vocab_size, seed=7, max_docs=15)
    timed = packed_batches(args.compile_batches, args.batch, 512, config.vocab_size, seed=8, max_docs=15)
    models = {"compiled": compiled, "eager": eager}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-5) for name, m in models.items()}

    def step(name, batch):
        model, opt = models[name], optimizers[name]
        opt.zero_grad(set_to_none=True)
        out = model(batch["input_ids"], batch["attention_mask"], batch["labels"], doc_lens=batch["doc_lens"])
        out.loss.backward()
        opt.step()

    start = time.perf_counter()
    for batch in warmup:
        step("compiled", batch)
    compile_seconds = time.perf_counter() - start
    frames = backend.frame_count
    for batch in warmup:
        step("eager", batch)
    fns = {name: functools.partial(step, name) for name in models}
    seconds = interleaved(models, fns, timed, args.repeats, "cpu", warmup=0, best=args.best)
    tokens = statistics.mean(int(b["attention_mask"].sum()) for b in timed)
    tps = {name: round(tokens / s, 1) for name, s in seconds.items()}
    share = extern_kernel_share(functools.partial(step, "eager"), timed)
    return {
        "config": "6 layers x 256, vocab 32,000, sdpa, fp32",
        "batches": f"{args.batch} x 512 packed, 1-15 documents per row, 30% masked",
        "real_tokens_per_batch": tokens,
        "train_tokens_per_s": tps,
        "ratio_compiled_over_eager": round(tps["compiled"] / tps["eager"], 3),
        "compile_and_warmup_seconds": round(compile_seconds, 1),
        "graphs": frames,
        "recompilations_after_warmup": backend.frame_count - frames,
        "graph_breaks": sum(counters["graph_break"].values()),
        # What compilation cannot speed up: inductor calls the matmul and SDPA kernels as they are.
        "eager_time_in_matmul_and_sdpa_kernels": round(share, 3),
        "compile_speedup_bound": round(1.0 / share, 3),
        "target": ">= 1.2 (never < 1.0)",
    }


EXTERN_KERNELS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::_scaled_dot_product")


def extern_kernel_share(step, batches) -> float:
    """Share of an eager step's self CPU time spent in matmul and SDPA kernels (torch.profiler): the part that
    compiled code runs unchanged, so ``1 / share`` bounds what compilation can gain (Amdahl)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches:
            step(batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    extern = sum(e.self_cpu_time_total for e in events if e.key.startswith(EXTERN_KERNELS))
    return extern / total


# ---- head memory at a 256k vocabulary (CPU) -----------------------------------------------------------------

HEAD_VARIANTS = ("ours_chunked", "ours_plain", "hf_sparse")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def head_memory_worker(variant: str, args) -> dict:
    """One contender in this (fresh) process: peak RSS of a training step above the RSS before it."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    config = ModelConfig(
        vocab_size=256000,
        hidden_size=256,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=1024,
        attn_backend="sdpa",
        loss_chunk_size=args.head_chunk,
    )
    torch.manual_seed(0)
    if variant == "hf_sparse":
        hf = ModernBertConfig(**{**config.to_hf_dict(), "sparse_prediction": True})
        model = ModernBertForMaskedLM._from_config(hf, attn_implementation="sdpa")
    else:
        model = MMBertForMaskedLM(config)
    model.train()
    batch = make_batch([args.head_length] * args.head_rows, config.vocab_size, 0.3, seed=0)

    def step():
        model.zero_grad(set_to_none=False)  # gradients stay allocated: part of the model's own memory
        if variant == "hf_sparse":
            out = model(**batch)
        else:
            out = model(**batch, return_logits=variant == "ours_plain")
        out.loss.backward()

    step()  # allocates the gradients
    times, extra = [], []
    for _ in range(args.head_repeats):
        before = _rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        extra.append((_rss_kib("VmHWM") - before) / 1024)
    return {
        "variant": variant,
        "labelled_tokens": int((batch["labels"] != -100).sum()),
        "extra_peak_mib": round(min(extra), 1),
        "step_seconds": round(statistics.median(times), 3),
        "rss_before_mib": round(before / 1024, 1),
    }


def head_memory_benchmark(args) -> dict:
    import subprocess

    rows = {}
    for variant in HEAD_VARIANTS:
        cmd = [
            sys.executable,
            __file__,
            "--head-memory-worker",
            variant,
            "--head-chunk",
            str(args.head_chunk),
            "--head-rows",
            str(args.head_rows),
            "--head-length",
            str(args.head_length),
            "--head-repeats",
            str(args.head_repeats),
        ]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        rows[variant] = json.loads(done.stdout)
    ours = rows["ours_chunked"]
    return {
        "config": "2 layers x 256, vocab 256,000, fp32, forward + backward (gradients preallocated)",
        "batch": f"{args.head_rows} x {args.head_length}, 30% masked; loss_chunk_size {args.head_chunk}",
        "rows": rows,
        "extra_memory_ratio": {
            f"ours_chunked/{b}": round(ours["extra_peak_mib"] / rows[b]["extra_peak_mib"], 3)
            for b in ("ours_plain", "hf_sparse")
        },
        "time_ratio": {
            f"ours_chunked/{b}": round(ours["step_seconds"] / rows[b]["step_seconds"], 3)
            for b in ("ours_plain", "hf_sparse")
        },
        "target": "extra memory <= 0.3x, time <= 1.0x",
    }


# ---- GPU --------------------------------------------------------------------------------------------------------

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def train_flops(config: ModelConfig, batch) -> float:
    """Model FLOPs of one training step (3x forward) counting only real tokens and the keys each really sees.

    Per token and layer: 2 * (4H^2 + 3HI) for Wqkv, Wo, Wi, Wo; attention 4 * H * keys (QK^T and PV), where keys
    is the document length (global layers) or the keys inside the window (local). Head on labelled tokens only:
    2 * (H^2 + H V).
    """
    h, inter, v = config.hidden_size, config.intermediate_size, config.vocab_size
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    w = config.window_half
    n_global = sum(config.is_global_layer(i) for i in range(config.num_hidden_layers))
    n_local = config.num_hidden_layers - n_global
    total = 0.0
    for n in lengths:
        linear = 2 * (4 * h * h + 3 * h * inter) * config.num_hidden_layers * n
        local_keys = sum(min(i + w, n - 1) - max(i - w, 0) + 1 for i in range(n)) if n_local else 0
        attention = 4 * h * (n_global * n * n + n_local * local_keys)
        total += linear + attention
    labelled = int((batch["labels"] != -100).sum())
    total += 2 * (h * h + h * v) * labelled
    return 3.0 * total


def gpu_benchmark(args) -> dict:
    device = "cuda"
    name = torch.cuda.get_device_name()
    peak = peak_tflops(name, args.peak_tflops)
    config = ModelConfig.preset("mmbert-base")
    results: dict = {
        "device": name,
        "peak_bf16_tflops": peak,
        "config": "mmbert-base",
        "dtype": "bf16 autocast",
    }
    for length, rows in ((1024, args.gpu_rows_1024), (8192, args.gpu_rows_8192)):
        models = build_models(config, ["flex", "sdpa"], device, sparse_only=True)
        gen = torch.Generator().manual_seed(length)
        batches = [
            make_batch(
                torch.randint(length // 8, length + 1, (rows,), generator=gen).tolist(),
                256000,
                0.3,
                s,
                device,
            )
            for s in range(args.gpu_batches)
        ]
        fns = train_step_fns(models, autocast_dtype=torch.bfloat16, device=device)
        # Compiled as transformers' ModernBERT does by default on CUDA (its `reference_compile`): the MLPs (and
        # for us FlexAttention itself, which our flex backend always compiles).
        for n in models:
            if n.startswith("ours"):
                for layer in models[n].model.layers:
                    layer.mlp.compile(dynamic=True)
        seconds = interleaved(models, fns, batches, args.repeats, device, warmup=2)
        tokens = statistics.mean(real_tokens(b) for b in batches)
        flops = statistics.mean(train_flops(config, b) for b in batches)
        entry = {"rows": rows, "real_tokens_per_batch": tokens, "tokens_per_s": {}, "mfu": {}}
        for n, s in seconds.items():
            entry["tokens_per_s"][n] = round(tokens / s, 1)
            if peak:
                entry["mfu"][n] = round(flops / s / (peak * 1e12), 4)
        entry["ratio"] = {
            f"{o}/hf_sdpa_sparse": round(
                entry["tokens_per_s"][o] / entry["tokens_per_s"]["hf_sdpa_sparse"], 3
            )
            for o in ("ours_flex", "ours_sdpa")
        }
        results[f"train_{length}"] = entry
        del models
        torch.cuda.empty_cache()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8, help="rows per CPU batch")
    parser.add_argument("--batches", type=int, default=2, help="distinct batches per timed step group")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--local-length", type=int, default=1024, help="L for the local-only scaling check")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="repeats 2, one batch of 4 rows")
    parser.add_argument(
        "--best",
        action="store_true",
        help="report the fastest repetition instead of the median (busy machines)",
    )
    parser.add_argument("--gpu", dest="gpu", action="store_true", default=None)
    parser.add_argument("--no-gpu", dest="gpu", action="store_false")
    parser.add_argument("--no-cpu", dest="cpu", action="store_false", default=True)
    parser.add_argument("--gpu-rows-1024", type=int, default=32)
    parser.add_argument("--gpu-rows-8192", type=int, default=4)
    parser.add_argument("--gpu-batches", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak of the GPU")
    parser.add_argument("--compile", action="store_true", help="compiled (compile_regions) vs eager training")
    parser.add_argument(
        "--compile-batches", type=int, default=4, help="distinct packed batches per timed group"
    )
    parser.add_argument("--head-memory", action="store_true", help="256k-vocabulary head: memory and time")
    parser.add_argument("--head-chunk", type=int, default=128, help="loss_chunk_size for --head-memory")
    parser.add_argument("--head-rows", type=int, default=2)
    parser.add_argument("--head-length", type=int, default=1024)
    parser.add_argument("--head-repeats", type=int, default=3)
    parser.add_argument("--head-memory-worker", choices=HEAD_VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.head_memory_worker:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(head_memory_worker(args.head_memory_worker, args)))
        return 0
    if args.quick:
        args.repeats, args.batches, args.batch = 2, 1, 4
    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict = {
        "benchmark": "model_throughput",
        "command": "python bench/model_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "statistic": "min over repeats" if args.best else "median over repeats",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": torch.get_num_threads(),
        },
        "torch": torch.__version__,
    }
    import transformers

    out["transformers"] = transformers.__version__
    if args.cpu:
        out["cpu"] = cpu_benchmark(args)
    if args.compile:
        out["compile"] = compile_benchmark(args)
    if args.head_memory:
        out["head_memory"] = head_memory_benchmark(args)
    use_gpu = torch.cuda.is_available() if args.gpu is None else args.gpu
    if use_gpu:
        out["gpu"] = gpu_benchmark(args)
    else:
        out["gpu"] = "not measured: no CUDA device"
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
