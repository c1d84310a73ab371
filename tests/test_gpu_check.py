"""scripts/gpu_check.py: the dry run on CPU runs every part that needs no CUDA and reports the rest as skipped."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def _load_script(name: str = "gpu_check"):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_mds_is_a_valid_corpus(tmp_path):
    """The synthetic data passes the manifest check and holds what the manifest says."""
    from streaming.base.local import LocalDataset

    from mmbert_train.data.manifest import load_manifest

    gpu_check = _load_script()
    root = gpu_check.write_synthetic_mds(
        tmp_path / "mds", max_seq_len=256, tokens_per_language=2000, vocab=500
    )
    manifest = load_manifest(root / "manifest.json")
    assert manifest["max_seq_len"] == 256
    for lang in gpu_check.SYNTHETIC_LANGUAGES:
        counts = manifest["sources"]["udhr"][lang]
        docs = LocalDataset(str(root / "udhr" / lang))
        lengths = [len(docs[i]["input_ids"]) for i in range(len(docs))]
        assert counts["samples"] == len(docs) and counts["tokens"] == sum(lengths) >= 2000
        assert max(lengths) <= 256 and min(lengths) >= 8
        first = docs[0]["input_ids"]
        assert first[0] == 2 and first[-1] == 1 and 5 <= first[1:-1].min() and first[1:-1].max() < 500
        assert counts["heldout_documents"] == len(LocalDataset(str(root / "udhr" / lang / "heldout")))


def test_table_names_every_part_and_why_it_was_skipped():
    gpu_check = _load_script()
    report = {
        "parts": {
            "parity": {
                "status": "ok",
                "flash": {"status": "skipped", "reason": "flash-attn is not installed"},
                "flex": {"status": "ok", "logits_rel_err": 0.004, "grad_rel_err_max": 0.01},
                "sdpa": {"status": "ok", "logits_rel_err": 0.003, "grad_rel_err_max": 0.02},
                "seconds": 12.0,
            },
            "train_1024": {"status": "failed", "reason": "did not finish within 130 s", "seconds": 130},
            "gpu_tests": {"status": "ok", "tests": 4, "failures": 0, "skipped": 0, "seconds": 30.5},
        }
    }
    table = gpu_check.format_table(report).splitlines()
    assert table[0] == "| part | status | figures | seconds |"
    assert "flash: skipped (flash-attn is not installed); flex: logits 0.004, grads 0.01" in table[2]
    assert table[3] == "| train_1024 | failed | did not finish within 130 s | 130 |"
    assert table[4] == "| gpu_tests | ok | 4 tests, 0 failed, 0 skipped | 30.5 |"


def test_without_cuda_the_real_check_refuses_clearly(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    gpu_check = _load_script()
    assert gpu_check.main(["--out", str(tmp_path)]) == 2


@pytest.mark.slow
def test_dry_run_runs_every_part_on_cpu(tmp_path):
    """The whole check at tiny shapes on CPU: one JSON report and a table; what needs CUDA is skipped with its
    reason. Run under the import recorder of scripts/gpu_wheels.py: every distribution it imports is in the GPU
    machines' image or in the carried wheel list (scripts/gpu_wheels.txt), so the GPU run finds what it needs."""
    gpu_wheels = _load_script("gpu_wheels")
    out = tmp_path / "check"
    log = tmp_path / "log.txt"
    with log.open("w") as fh:
        status, imported = gpu_wheels.record(
            [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], stdout=fh
        )
    output = log.read_text()
    assert status == 0, output
    assert {"mosaicml", "mosaicml-streaming", "torch", "torch-optimi"} <= set(imported)
    assert gpu_wheels.missing(imported, gpu_wheels.read_wheel_list()) == []
    report = json.loads((out / "gpu_check.json").read_text())
    parts = report["parts"]
    assert sorted(parts) == sorted(["parity", "train_1024", "train_8192", "throughput", "gpu_tests"])
    assert parts["parity"]["sdpa"]["status"] == "ok"
    assert parts["parity"]["sdpa"]["grad_rel_err_max"] < 0.05
    assert parts["parity"]["flash"] == {"status": "skipped", "reason": "flash-attn runs on CUDA only"}
    for part, seq_len in (("train_1024", 128), ("train_8192", 256)):
        r = parts[part]
        assert r["status"] == "ok", r
        assert r["settings"]["seq_len"] == seq_len and r["steps"] == 6
        assert r["tokens_per_s"] > 0 and r["peak_memory"] > 0 and r["planner_estimate"] > 0
        assert r["graphs_after_warmup"] == 0
    assert parts["throughput"]["status"] == "skipped"
    assert parts["gpu_tests"]["status"] in ("skipped", "ok")
    table = (out / "gpu_check.md").read_text()
    assert table.count("\n") == 7 and "| train_8192 | ok |" in table
    assert "skipped: throughput (not measured: no CUDA device)" in output
