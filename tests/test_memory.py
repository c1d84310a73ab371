"""The memory planner: units, each term's formula, sharding, the microbatch search, recipe plans and warnings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmbert_train.memory import (
    StepShape,
    TrainingSetup,
    estimate_step_memory,
    largest_microbatch,
    parse_memory,
    plan_recipe,
)
from mmbert_train.model import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(
    vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4
)


def test_parse_memory_units():
    assert parse_memory("80GB") == 80 * 10**9
    assert parse_memory("80GiB") == 80 * 2**30
    assert parse_memory("1.5 TB") == 1.5e12
    assert parse_memory("512mib") == 512 * 2**20
    assert parse_memory(1234) == 1234
    with pytest.raises(ValueError, match=r"'eighty': expected a positive number with a unit, e\.g\. 80GB"):
        parse_memory("eighty")
    with pytest.raises(ValueError, match="expected a positive number"):
        parse_memory("0GB")


def test_model_states_count_every_parameter_once():
    """4 bytes of weights, 4 of gradients and 8 of Adam moments per parameter of the real model (tied decoder
    counted once), counted independently by instantiating it."""
    from mmbert_train.model import MMBertForMaskedLM

    config = ModelConfig(**SMALL)
    n = sum(p.numel() for p in MMBertForMaskedLM(config).parameters())
    est = estimate_step_memory(config, StepShape(tokens=10, masked=3, doc_len=10), TrainingSetup())
    assert est.terms["weights (fp32)"] == 4 * n
    assert est.terms["gradients (fp32)"] == 4 * n
    assert est.terms["optimizer state"] == 8 * n
    amp = estimate_step_memory(config, StepShape(10, 3, 10), TrainingSetup(precision="amp_bf16"))
    assert amp.terms["autocast weight copies"] == 2 * n
    ddp = estimate_step_memory(config, StepShape(10, 3, 10), TrainingSetup(parallelism="ddp", world_size=4))
    assert ddp.terms["DDP gradient buckets"] == 4 * n


def test_fsdp_shards_model_states_over_ranks():
    config = ModelConfig(**SMALL)
    shape = StepShape(tokens=100, masked=30, doc_len=100)
    one = estimate_step_memory(config, shape, TrainingSetup(precision="amp_bf16"))
    for world in (2, 8):
        sharded = estimate_step_memory(
            config, shape, TrainingSetup(precision="amp_bf16", parallelism="fsdp", world_size=world)
        )
        assert sharded.terms["weights (fp32 shard)"] == pytest.approx(one.terms["weights (fp32)"] / world)
        assert sharded.terms["optimizer state (shard)"] == pytest.approx(one.terms["optimizer state"] / world)
        # activations do not depend on the sharding
        assert sharded.terms["activations (layers)"] == one.terms["activations (layers)"]
    hybrid = TrainingSetup(parallelism="fsdp", world_size=32, sharding_strategy="HYBRID_SHARD")
    full8 = TrainingSetup(parallelism="fsdp", world_size=8)
    assert estimate_step_memory(config, shape, hybrid).terms["weights (fp32 shard)"] == pytest.approx(
        estimate_step_memory(config, shape, full8).terms["weights (fp32 shard)"]
    )


def test_activations_scale_with_tokens_and_heads_with_masked_tokens():
    config = ModelConfig(**SMALL)
    setup = TrainingSetup(backend="flash", precision="amp_bf16")
    a = estimate_step_memory(config, StepShape(tokens=1000, masked=300, doc_len=500), setup)
    b = estimate_step_memory(config, StepShape(tokens=2000, masked=300, doc_len=500), setup)
    assert b.terms["activations (layers)"] == pytest.approx(2 * a.terms["activations (layers)"])
    # flash, bf16, per token and layer: fp32 residual (2h + 4 + heads) + bf16 (3h + 4i + 2 head_dim + 5h)
    h, i, heads, d = 64, 96, 4, 16
    per_token = 4 * (2 * h + 4 + heads) + 2 * (3 * h + 4 * i + 2 * d + 5 * h)
    assert a.terms["activations (layers)"] == pytest.approx(1000 * 3 * per_token)


def test_plain_head_grows_with_masked_tokens_and_chunked_is_capped():
    config = ModelConfig(**SMALL)  # vocab 1000
    plain = TrainingSetup(head="plain", precision="amp_bf16")
    chunked = TrainingSetup(head="chunked", chunk_size=256, precision="amp_bf16")
    logits = {}
    for masked in (100, 1000, 4000):
        shape = StepShape(tokens=8000, masked=masked, doc_len=1000)
        logits[("plain", masked)] = estimate_step_memory(config, shape, plain).terms[
            "head logits (plain loss)"
        ]
        logits[("chunked", masked)] = estimate_step_memory(config, shape, chunked).terms[
            "head logits (chunks of 256)"
        ]
    # plain: masked x vocab x (2 bf16 logits + 3 fp32 blocks) bytes
    assert logits[("plain", 1000)] == 1000 * 1000 * (2 + 12)
    assert logits[("plain", 4000)] == 4 * logits[("plain", 1000)]
    # chunked: one chunk of 256 rows (logits bf16 + fp32 copy), whatever the masked count above it
    assert logits[("chunked", 1000)] == logits[("chunked", 4000)] == 256 * 1000 * (2 + 4)
    assert logits[("chunked", 100)] == 100 * 1000 * (2 + 4)


def test_sdpa_layers_save_q_k_v_whatever_the_window_or_document_length():
    """The sdpa custom op saves only q, k, v for backward (gathers are redone there), so a layer saves the same
    per token for any window or document length: 8h + 4i fp32 elements plus the norm statistics (4 elements), and
    layer 0 one h less (no attention norm)."""
    config = ModelConfig(**SMALL, local_attention=16)  # block-local above 4 x 8 = 32 tokens
    setup = TrainingSetup(backend="sdpa")
    short = estimate_step_memory(config, StepShape(tokens=3200, masked=0, doc_len=32), setup)
    long = estimate_step_memory(
        config, StepShape(tokens=3200, masked=0, doc_len=3200, bucket_padding=1.5), setup
    )
    assert long.terms["activations (layers)"] == short.terms["activations (layers)"]
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    expected = 3200 * (n * (4 * (8 * h + 4 * i) + 16) - 4 * h)
    assert short.terms["activations (layers)"] == expected


def test_largest_microbatch_is_the_boundary_of_the_budget():
    config = ModelConfig.preset("mmbert-small")
    setup = TrainingSetup(precision="amp_bf16", backend="flash", parallelism="fsdp", world_size=8)
    memory = parse_memory("40GB")
    best = largest_microbatch(config, setup, seq_len=1024, mask_ratio=0.3, memory=memory, headroom=0.1)
    assert best > 0

    def peak(rows):
        return estimate_step_memory(config, StepShape.packed(rows, 1024, 0.3), setup).peak

    assert peak(best) <= 0.9 * memory < peak(best + 1)
    assert largest_microbatch(config, setup, seq_len=1024, mask_ratio=0.3, memory=10**6) == 0
    with pytest.raises(ValueError, match="headroom"):
        largest_microbatch(config, setup, seq_len=1024, mask_ratio=0.3, memory=memory, headroom=1.0)


def test_plan_of_a_shipped_recipe_names_its_terms():
    from mmbert_train.config import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "base_midtrain.yaml")
    plan = plan_recipe(recipe, memory="80GB", world_size=8, head="chunked")
    assert plan.setup.parallelism == "fsdp" and plan.setup.precision == "amp_bf16"
    assert plan.seq_len == 8192 and plan.microbatch == recipe.trainer.device_microbatch_size
    assert plan.fits and plan.max_microbatch >= plan.microbatch
    assert plan.estimate.dominant == "activations (layers)"
    text = plan.format()
    assert "largest microbatch that fits" in text and "dominant: activations (layers)" in text
    # a fraction of the memory fits fewer rows
    assert (
        plan_recipe(recipe, memory="40GB", world_size=8, head="chunked").max_microbatch < plan.max_microbatch
    )
    # the plain loss holds all masked tokens' logits: fewer rows fit
    assert plan_recipe(recipe, memory="80GB", world_size=8, head="plain").max_microbatch < plan.max_microbatch


def _config_cli(capsys, *args: str) -> tuple[int, str]:
    """`mmbert config ARGS` in this process: (exit status, stderr)."""
    from mmbert_train.commands.config import main

    code = main([str(ROOT / args[0]), *args[1:]])
    return code, capsys.readouterr().err


def test_config_warns_when_the_microbatch_cannot_fit(capsys):
    where = ROOT / "recipes" / "base_pretrain.yaml"
    code, err = _config_cli(capsys, "recipes/base_pretrain.yaml", "trainer.device_microbatch_size=1024")
    assert code == 0
    assert f"warning: {where}: trainer.device_microbatch_size 1024 x 1024 tokens needs about" in err
    assert "more than trainer.gpu_memory 80GB leaves after 10% headroom (72.0 GB)" in err
    assert "the largest microbatch that fits is" in err
    code, err = _config_cli(capsys, "recipes/base_pretrain.yaml", "trainer.device_microbatch_size=8")
    assert code == 0 and "warning" not in err
    # the recipe names the memory it is sized for
    code, err = _config_cli(capsys, "recipes/base_pretrain.yaml", "trainer.gpu_memory=24GB")
    assert "more than trainer.gpu_memory 24GB leaves after 10% headroom (21.6 GB)" in err


def test_gpu_memory_must_be_a_size(capsys):
    code, err = _config_cli(capsys, "recipes/base_pretrain.yaml", "trainer.gpu_memory=lots")
    assert code == 2
    assert "trainer.gpu_memory" in err and "expected a positive number with a unit" in err


@pytest.mark.slow
def test_estimate_within_15_percent_of_measured_cpu_peaks():
    """bench/memory_planner.py --quick: three small configurations measured in child processes (CPU, fp32)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "memory_planner.py"), "--quick"],
        capture_output=True, text=True, cwd=ROOT, check=True, timeout=1200,
    )  # fmt: skip
    report = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert len(report["results"]) == 3
    for row in report["results"]:
        assert row["baseline_slack"] < 0.02 * row["measured_peak"], row["name"]
        assert 0.85 <= row["ratio"] <= 1.15, (row["name"], row["ratio"])
