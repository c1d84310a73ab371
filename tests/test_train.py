"""The Composer trainer in one process: a tiny run, checkpoints, token-weighted loss, FLOPs, phase chaining."""

from __future__ import annotations

import copy
import os
import textwrap

import pytest
import torch
from composer.core import Callback
from composer.loggers import InMemoryLogger
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

from mmbert_train.config import load_recipe
from mmbert_train.model import ModelConfig, load_pretrained
from mmbert_train.train.composer_model import MMBertComposerModel, batch_token_counts
from mmbert_train.train.testing import fixed_data_spec, packed_batches
from mmbert_train.train.trainer import TrainSetupError, build_trainer, parallelism_config, resolve_precision

RECIPE = """
name: tiny
phase: smoke
model: {{preset: tiny}}
data: {{root: mds, languages: [eng], tau: 0.7, sources: {{udhr: {{}}}}, max_seq_len: 64, mask_ratio: 0.3}}
optimizer: {{lr: 3.0e-3, weight_decay: 1.0e-4}}
scheduler: {{t_warmup: 2ba, t_decay: 4ba, decay_shape: linear, alpha_f: 0.1}}
trainer:
  max_duration: {steps}ba
  global_batch_size: 8
  device_microbatch_size: {micro}
  save_folder: {folder}
  save_interval: 4ba
  progress_bar: false
eval: {{enabled: false}}
"""


def make_recipe(tmp_path, name="r.yaml", steps=8, micro=4, folder="ckpt", overrides=()):
    path = tmp_path / name
    path.write_text(textwrap.dedent(RECIPE.format(steps=steps, micro=micro, folder=tmp_path / folder)))
    return load_recipe(path, overrides)


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.state.model.model.state_dict().items()}


def test_tiny_run_trains_checkpoints_and_follows_the_schedule(tmp_path):
    recipe = make_recipe(tmp_path, steps=8)
    batches = packed_batches(2, 8, 64, 512, seed=1)  # 4 epochs over 2 batches: the loss must fall
    memory = InMemoryLogger()
    trainer = build_trainer(recipe, train_dataloader=fixed_data_spec(batches), loggers=[memory])
    trainer.fit()
    losses = [float(v) for _, v in memory.data["loss/train/total"]]
    assert len(losses) == 8 and losses[-1] < losses[0]
    lrs = [float(v) for _, v in memory.data["lr-StableAdamW/group0"]]
    # warmup 2ba, stable to batch 4, linear decay over the last 4 to 0.1 * peak
    expected = [0.0, 0.5, 1.0, 1.0, 1.0, 1 - 0.9 * 0.25, 1 - 0.9 * 0.5, 1 - 0.9 * 0.75]
    assert lrs == pytest.approx([3e-3 * m for m in expected])
    assert trainer.state.timestamp.token.value == 4 * sum(int(b["attention_mask"].sum()) for b in batches)
    # checkpoints: every 4 batches, with the model config (Contract 1) and the resolved recipe next to them
    folder = tmp_path / "ckpt"
    assert sorted(p.name for p in folder.glob("ep*-rank0.pt")) == ["ep1-ba4-rank0.pt", "ep3-ba8-rank0.pt"]
    saved_recipe = load_recipe(folder / "recipe.yaml")  # fully resolved: every model field written out
    assert saved_recipe.model_config == recipe.model_config and saved_recipe.trainer == recipe.trainer
    state = torch.load(folder / "latest-rank0.pt", weights_only=False)["state"]
    assert state["callbacks"]["ModelConfigRecorder"]["model_config"] == ModelConfig.preset("tiny").to_dict()
    reloaded = load_pretrained(folder / "latest-rank0.pt")
    final = weights(trainer)
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, final[key]), key


class GradientProbe(Callback):
    """Keeps the gradients of the first optimizer step (they stay on the parameters until the next batch)."""

    def __init__(self) -> None:
        self.grads = None

    def after_train_batch(self, state, logger) -> None:
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in state.model.named_parameters()}


def test_loss_is_weighted_by_masked_tokens_across_microbatches(tmp_path):
    """Microbatches of 2 rows with different numbers of masked tokens give the gradient of the whole batch's
    token mean (not the mean of microbatch means)."""
    batches = packed_batches(1, 8, 64, 512, seed=2)
    counts = [batch_token_counts({k: v[i : i + 2] for k, v in batches[0].items()}) for i in range(0, 8, 2)]
    assert len({c["loss_generating"] for c in counts}) > 1  # the microbatches differ
    grads = []
    for micro in (8, 2):
        constant = ["scheduler.name=constant", "scheduler.t_warmup=0ba", "scheduler.t_decay=0ba"]
        recipe = make_recipe(tmp_path, name=f"m{micro}.yaml", steps=1, micro=micro, overrides=constant)
        probe = GradientProbe()
        trainer = build_trainer(
            recipe,
            train_dataloader=fixed_data_spec(batches),
            callbacks=[probe],
            save_folder=None,
            autoresume=False,
        )
        trainer.fit()
        grads.append(probe.grads)
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-4, atol=1e-7, msg=key)


@pytest.mark.parametrize("doc_len", [12, 40])
def test_flops_per_batch_matches_a_flop_counter_on_a_real_step(doc_len):
    """The MFU formula (`flops_per_batch`) against torch.utils.flop_counter on a real forward + backward.

    The counter sees every matmul the eager attention backend runs. Two facts make the comparison exact:
    the counter counts no elementwise work (norms, GELU, softmax, RoPE: the formula leaves them out too), and
    eager attention computes each document's full ``L x L`` score matrix even in local layers, where the
    formula counts only the ``local_attention + 1 = 17`` keys a query may see (what flash-attn's sliding window
    computes). So with documents no longer than the window the two agree exactly; with longer ones the counter
    is higher by exactly the masked-out part: 3 (forward + backward) x 4 h (QK^T and AV) x local layers x
    sum over documents of L (L - 17).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from mmbert_train.model import MMBertForMaskedLM

    torch.manual_seed(0)
    config = ModelConfig.preset("tiny", attn_backend="eager")  # h 64, 4 layers: global 0 and 3, window 16
    assert [config.is_global_layer(i) for i in range(4)] == [True, False, False, True]
    n_docs = 4
    doc_lens = torch.full((2, 2), doc_len, dtype=torch.int32)  # equal lengths: eager pads nothing
    input_ids = torch.randint(5, config.vocab_size, (2, 2 * doc_len))
    labels = torch.full((2, 2 * doc_len), -100)
    labels[:, ::5] = input_ids[:, ::5]  # the sparse head runs on these tokens only
    batch = {"input_ids": input_ids, "doc_lens": doc_lens, "labels": labels,
             "attention_mask": torch.ones(2, 2 * doc_len, dtype=torch.long)}  # fmt: skip
    model = MMBertComposerModel(MMBertForMaskedLM(config))
    with FlopCounterMode(display=False) as counter:
        model.loss(model(batch), batch).backward()
    counted = counter.get_total_flops()
    masked_out = 3 * 4 * 64 * 2 * n_docs * doc_len * max(0, doc_len - 17)
    assert model.flops_per_batch(batch) == pytest.approx(counted - masked_out, rel=1e-12)
    assert (masked_out > 0) == (doc_len > 17)


def test_parallelism_and_precision_choices(tmp_path, monkeypatch):
    recipe = make_recipe(tmp_path, overrides=["trainer.parallelism=fsdp"])
    assert parallelism_config(recipe, "cpu", 1) is None  # one process: nothing to shard
    monkeypatch.delenv("FSDP_VERSION", raising=False)
    with pytest.raises(TrainSetupError, match="FSDP_VERSION=2"):
        parallelism_config(recipe, "cpu", 2)
    monkeypatch.setenv("FSDP_VERSION", "2")
    fsdp = parallelism_config(recipe, "cpu", 2)["fsdp"]
    assert fsdp["state_dict_type"] == "full" and "sharding_strategy" not in fsdp
    assert parallelism_config(make_recipe(tmp_path, overrides=["trainer.parallelism=ddp"]), "cpu", 2) is None
    assert resolve_precision(recipe, "cpu") == "fp32" and resolve_precision(recipe, "gpu") == "amp_bf16"
    bf16 = make_recipe(tmp_path, overrides=["trainer.precision=amp_bf16"])
    with pytest.raises(TrainSetupError, match="needs a GPU"):
        resolve_precision(bf16, "cpu")


def test_phase_chaining_loads_weights_optimizer_state_and_restarts_the_schedule(tmp_path):
    first = make_recipe(tmp_path, steps=4, folder="phase1", overrides=["scheduler.t_decay=2ba"])
    build_trainer(first, train_dataloader=fixed_data_spec(packed_batches(4, 8, 64, 512, seed=3))).fit()
    saved = torch.load(tmp_path / "phase1" / "latest-rank0.pt", weights_only=False)["state"]
    second = make_recipe(
        tmp_path,
        name="second.yaml",
        steps=2,
        folder="phase2",
        overrides=[
            f"init_from.path={tmp_path / 'phase1' / 'latest-rank0.pt'}",
            "model.global_rope_theta=160000",
            "model.local_rope_theta=160000",
            "data.max_seq_len=128",
            "scheduler.t_warmup=0ba",
            "scheduler.t_decay=1dur",
        ],
    )
    seen = {}

    class Probe:
        def run_event(self, event, state, logger):
            if event.value == "before_train_batch" and "weights" not in seen:
                seen["batch"] = int(state.timestamp.batch)
                seen["weights"] = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
                optim = get_optimizer_state_dict(state.model, state.optimizers[0])
                seen["optim"] = copy.deepcopy(optim)  # the tensors are the live moments: copy before the step
                seen["lr"] = state.optimizers[0].param_groups[0]["lr"]

    probe = type("Probe", (Callback,), {"run_event": Probe.run_event})()
    trainer = build_trainer(
        second, train_dataloader=fixed_data_spec(packed_batches(2, 8, 128, 512, seed=4)), callbacks=[probe]
    )
    assert trainer.state.model.model.config.global_rope_theta == 160000.0
    assert trainer.state.model.model.config.local_rope_theta == 160000.0
    trainer.fit()
    assert seen["batch"] == 0 and seen["lr"] == pytest.approx(3e-3)  # time and schedule restart
    for key, value in saved["model"].items():
        assert torch.equal(seen["weights"][key], value), key
    saved_optim = saved["optimizers"]["StableAdamW"]["state"]["model.model.layers.0.attn.Wqkv.weight"]
    assert saved_optim, "the previous phase saved Adam moments"
    loaded = seen["optim"]["state"]["model.model.layers.0.attn.Wqkv.weight"]
    assert {"exp_avg", "exp_avg_sq"} <= set(saved_optim)
    for key, value in saved_optim.items():
        if torch.is_tensor(value):
            assert torch.equal(loaded[key], value), key
    assert int(seen["optim"]["param_groups"][0]["step"]) == 4  # bias correction continues from phase 1


def test_init_from_missing_checkpoint_is_a_clear_error(tmp_path):
    recipe = make_recipe(tmp_path, overrides=["init_from.path=nope/latest-rank0.pt"])
    with pytest.raises(TrainSetupError, match="init_from.path 'nope/latest-rank0.pt' does not exist"):
        build_trainer(recipe, train_dataloader=fixed_data_spec(packed_batches(1, 8, 64, 512)))


def test_recipe_on_real_shards_trains_and_logs_heldout_eval(tmp_path):
    """The whole path a user runs: MDS shards -> loader -> trainer, with per-language held-out eval and the
    loader's packing efficiency logged."""
    from data_prep.testing import make_mds

    mds = make_mds(tmp_path / "data", max_seq_len=64, heldout_fraction=0.3, repeat=4)
    recipe_path = tmp_path / "real.yaml"
    recipe_path.write_text(
        textwrap.dedent(
            f"""
            name: real
            phase: smoke
            model: {{preset: tiny, vocab_size: 600}}
            data:
              root: {mds}
              languages: [eng, arb, hin, rus]
              tau: 0.7
              sources: {{web: {{}}}}
              max_seq_len: 64
              mask_ratio: 0.3
              num_workers: 0
              eval: {{languages: [eng, rus], groups: {{all4: [eng, arb, hin, rus]}}, max_samples_per_language: 2}}
            trainer: {{max_duration: 4ba, global_batch_size: 4, save_folder: {tmp_path / "ckpt"}, save_interval: 4ba,
                       progress_bar: false}}
            eval: {{interval: 2ba}}
            """
        )
    )
    memory = InMemoryLogger()
    trainer = build_trainer(load_recipe(recipe_path), loggers=[memory])
    trainer.fit()
    assert trainer.state.timestamp.batch.value == 4
    assert all(0 < float(v) <= 1 for _, v in memory.data["data/packing_efficiency"])
    for key in ("eval/eng/loss", "eval/rus/accuracy", "eval/group/all4/loss"):
        steps = [int(t.batch) for t, _ in memory.data[key]]
        assert steps == [2, 4], key  # every 2 batches, the last one at the end of the phase
    assert "eval/arb/loss" not in memory.data  # reported only inside its group


def test_optimizer_state_of_a_published_flexbert_checkpoint_is_mapped_by_name(tmp_path):
    from mmbert_train.checkpoints import CheckpointError, optimizer_state_by_name

    moments = {"exp_avg": torch.ones(2), "exp_avg_sq": torch.ones(2)}
    flex_keys = [
        "model.bert.embeddings.tok_embeddings.weight",
        "model.bert.encoder.layers.0.attn.Wqkv.weight",
        "model.bert.final_norm.weight",
        "model.head.dense.weight",
        "model.decoder.weight",  # tied to the embeddings: dropped
        "model.decoder.bias",
    ]
    state = {
        "model": {key: torch.zeros(2) for key in flex_keys},
        "optimizers": {
            "DecoupledAdamW": {
                "state": {key: dict(moments) for key in flex_keys},
                "param_groups": [{"lr": 8e-4, "params": flex_keys}],
            }
        },
    }
    path = tmp_path / "flex.pt"
    torch.save({"state": state}, path)
    mapped = optimizer_state_by_name(path, trust_pickle=True)
    expected = [
        "model.model.embeddings.tok_embeddings.weight",
        "model.model.layers.0.attn.Wqkv.weight",
        "model.model.final_norm.weight",
        "model.head.dense.weight",
        "model.decoder.bias",
    ]
    assert list(mapped["state"]) == expected
    assert mapped["param_groups"][0]["params"] == expected
    # a state keyed by parameter index cannot be mapped safely: a clear error
    state["optimizers"]["DecoupledAdamW"]["state"] = {0: dict(moments)}
    torch.save({"state": state}, path)
    with pytest.raises(CheckpointError, match="keys its state by parameter index"):
        optimizer_state_by_name(path, trust_pickle=True)
    # a Hugging Face directory has no optimizer state
    from safetensors.torch import save_file

    (tmp_path / "hf").mkdir()
    save_file({"decoder.bias": torch.zeros(2)}, tmp_path / "hf" / "model.safetensors")
    assert optimizer_state_by_name(tmp_path / "hf", trust_pickle=False) is None


def test_wandb_only_when_enabled_and_offline_without_network(tmp_path, monkeypatch):
    from composer.loggers import WandBLogger

    from mmbert_train.train import trainer as trainer_module

    assert trainer_module.build_loggers(make_recipe(tmp_path)) == []  # off by default
    pytest.importorskip("wandb")  # a required dependency; only the GPU machines' image lacks it
    monkeypatch.setattr(trainer_module, "_wandb_reachable", lambda timeout=2.0: False)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    loggers = trainer_module.build_loggers(make_recipe(tmp_path, overrides=["logging.wandb.enabled=true"]))
    assert len(loggers) == 1 and isinstance(loggers[0], WandBLogger)
    assert os.environ["WANDB_MODE"] == "offline"


def test_wandb_enabled_without_the_package_names_the_key(tmp_path, monkeypatch):
    import importlib.util

    from mmbert_train.train import trainer as trainer_module

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    recipe = make_recipe(tmp_path, overrides=["logging.wandb.enabled=true"])
    with pytest.raises(
        RuntimeError, match=r"logging\.wandb\.enabled is true but the wandb package is not installed"
    ):
        trainer_module.build_loggers(recipe)
