"""StableAdamW with fully decoupled weight decay, and the no-decay groups."""

from __future__ import annotations

import pytest
import torch

from mmbert_train.config import OptimizerConfig
from mmbert_train.model import MMBertForMaskedLM, ModelConfig
from mmbert_train.train.optim import build_optimizer, param_groups


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MMBertForMaskedLM(ModelConfig.preset("tiny"))


def test_no_decay_on_biases_and_norms(model):
    groups = param_groups(model, 0.1, ["bias", "norm"])
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in groups[0]["params"]}
    plain = {names[id(p)] for p in groups[1]["params"]}
    assert (groups[0]["weight_decay"], groups[1]["weight_decay"]) == (0.1, 0.0)
    assert "decoder.bias" in plain and "model.final_norm.weight" in plain and "head.norm.weight" in plain
    assert "model.layers.1.attn_norm.weight" in plain and "model.embeddings.norm.weight" in plain
    assert (
        "model.embeddings.tok_embeddings.weight" in decayed and "model.layers.0.attn.Wqkv.weight" in decayed
    )
    assert not any("norm" in n or "bias" in n for n in decayed)
    # every parameter exactly once (the tied decoder weight is the embedding)
    assert len(decayed) + len(plain) == len(list(model.parameters()))


@pytest.mark.parametrize("lr_scale", [1.0, 0.5, 0.02])
def test_zero_gradient_step_shrinks_weights_by_fully_decoupled_decay(model, lr_scale):
    cfg = OptimizerConfig(lr=8e-4, weight_decay=8e-5)
    opt = build_optimizer(model, cfg, on_cuda=False)
    for group in opt.param_groups:  # what a scheduler does: lr_t = multiplier * peak
        group["lr"] = cfg.lr * lr_scale
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    factor = 1 - cfg.weight_decay * (cfg.lr * lr_scale) / cfg.lr  # 1 - wd * lr / max_lr
    for name, p in model.named_parameters():
        if "norm" in name or "bias" in name:
            assert torch.equal(p, before[name]), name
        else:
            assert torch.equal(p, before[name] * factor), name
    # fully decoupled: the shrink does not scale with the LR's size (AdamW-style would be 1 - lr * wd)
    w = model.model.embeddings.tok_embeddings.weight
    ratio = (w / before["model.embeddings.tok_embeddings.weight"]).flatten()
    assert ratio[0].item() == pytest.approx(1 - 8e-5 * lr_scale, rel=0, abs=1e-7)


def test_optimizer_hyperparameters(model):
    opt = build_optimizer(model, OptimizerConfig(lr=4e-4, weight_decay=4e-5, betas=(0.9, 0.95), eps=1e-8))
    group = opt.param_groups[0]
    assert (group["lr"], group["max_lr"], group["beta1"], group["beta2"], group["eps"]) == (
        4e-4,
        4e-4,
        0.9,
        0.95,
        1e-8,
    )
    assert group["decouple_lr"] and group["triton"] is False  # no CUDA here


def test_a_real_step_reduces_the_loss(model):
    opt = build_optimizer(model, OptimizerConfig(lr=1e-2), on_cuda=False)
    ids = torch.randint(5, 512, (2, 32))
    labels = ids.clone()
    losses = []
    for _ in range(5):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
