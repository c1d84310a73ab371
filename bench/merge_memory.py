"""Peak memory and time of a TIES merge of 4 models: our streaming merge against holding the models in memory.

* baseline ``in_memory``: load base + 3 models with ``safetensors.torch.load_file`` (copied out of the map) and
  run ``mmbert_train.merge.ties_merge`` on the state dicts, then ``save_file`` - what a merge script written
  without care does;
* ours ``streaming``: ``merge_checkpoints`` (lazy memory maps released after every chunk, chunked TIES with an
  exact top-k, streamed safetensors output).

Each run is a fresh subprocess with one intra-op thread; memory is its peak RSS (``VmHWM``) minus its RSS after
imports. The model is embedding-dominated like mmBERT (V x H embedding, one small layer).

    .venv/bin/python bench/merge_memory.py --vocab 100000 --hidden 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUN = """
import json, sys, time
import psutil, torch
from safetensors.torch import load_file, save_file
from mmbert_train.merge import merge_checkpoints, ties_merge
mode, base, *models = sys.argv[1:6]
out = sys.argv[6]
after_imports = psutil.Process().memory_info().rss
start = time.perf_counter()
if mode == "streaming":
    merge_checkpoints(method="ties", base=base, models=models, out=out, density=0.5, progress=False)
else:
    def load(p):
        return {k: v.clone() for k, v in load_file(p + "/model.safetensors").items()}
    merged = ties_merge(load(base), [load(m) for m in models], density=0.5)
    save_file(merged, out + ".safetensors")
seconds = time.perf_counter() - start
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_growth": peak - after_imports}))
"""


def measure(mode: str, dirs: list[Path], out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", RUN, mode, *map(str, dirs), str(out)], capture_output=True, text=True, env=env
    )
    if result.returncode:
        raise SystemExit(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=100_000)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()

    from mmbert_train.checkpoints.testing import random_state, write_hf_dir
    from mmbert_train.model import ModelConfig

    config = ModelConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden,
        num_hidden_layers=1,
        num_attention_heads=max(1, args.hidden // 64),
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dirs = [write_hf_dir(root / f"m{seed}", config, random_state(config, seed)) for seed in range(4)]
        model_mb = (dirs[0] / "model.safetensors").stat().st_size / 1e6
        baseline = measure("in_memory", dirs, root / "baseline")
        ours = measure("streaming", dirs, root / "ours")
    print(
        json.dumps(
            {
                "model_mb": round(model_mb, 1),
                "in_memory": {
                    "seconds": round(baseline["seconds"], 2),
                    "peak_mb": round(baseline["peak_growth"] / 1e6),
                },
                "streaming": {
                    "seconds": round(ours["seconds"], 2),
                    "peak_mb": round(ours["peak_growth"] / 1e6),
                },
                "streaming_peak_in_models": round(ours["peak_growth"] / 1e6 / model_mb, 2),
                "peak_ratio_streaming_vs_in_memory": round(ours["peak_growth"] / baseline["peak_growth"], 3),
                "time_ratio_streaming_vs_in_memory": round(ours["seconds"] / baseline["seconds"], 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
