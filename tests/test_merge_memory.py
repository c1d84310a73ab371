"""Peak memory of a merge: a TIES merge of 4 models (base + 3) must stay below 2x the size of one model.

Measured in a subprocess as peak RSS (``VmHWM`` of /proc/self/status: unlike ``ru_maxrss`` it does not carry
the parent's RSS over ``fork``/``exec``) minus RSS after imports; tracemalloc would not see tensor memory. The model is embedding-dominated like mmBERT (V x H embedding ~ 98% of ~105 MB). A control run that
simply loads the four models shows the measurement would catch a merge that holds them all.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmbert_train.checkpoints.testing import random_state, write_hf_dir
from mmbert_train.model import ModelConfig

CONFIG = ModelConfig(
    vocab_size=100_000, hidden_size=256, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4
)

MEASURE = """
import json, sys
import psutil, torch
from safetensors.torch import load_file
from mmbert_train.merge import merge_checkpoints
base, *models = sys.argv[2:6]
after_imports = psutil.Process().memory_info().rss
if sys.argv[1] == "merge":
    merge_checkpoints(method="ties", base=base, models=models, out=sys.argv[6], density=0.5, progress=False)
else:  # control: what holding all four models costs
    held = [{k: v.clone() for k, v in load_file(p + "/model.safetensors").items()} for p in (base, *models)]
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"after_imports": after_imports, "peak": peak}))
"""


def _measure(mode, dirs, out):
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, mode, *map(str, dirs), str(out)],
        capture_output=True,
        text=True,
        check=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    return numbers["peak"] - numbers["after_imports"]


@pytest.mark.slow
def test_ties_merge_of_four_models_peaks_below_twice_one_model(tmp_path):
    dirs = [write_hf_dir(tmp_path / f"m{seed}", CONFIG, random_state(CONFIG, seed)) for seed in range(4)]
    model_bytes = (dirs[0] / "model.safetensors").stat().st_size
    assert model_bytes > 100e6

    merge_growth = _measure("merge", dirs, tmp_path / "merged")
    control_growth = _measure("load", dirs, tmp_path / "unused")
    print(f"model {model_bytes / 1e6:.0f} MB; merge peak +{merge_growth / 1e6:.0f} MB; "
          f"holding 4 models +{control_growth / 1e6:.0f} MB")  # fmt: skip
    assert control_growth > 3.5 * model_bytes  # the measurement sees tensor memory
    assert merge_growth < 2 * model_bytes
    assert (tmp_path / "merged" / "model.safetensors").stat().st_size == model_bytes
