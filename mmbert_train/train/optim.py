"""The optimizer: StableAdamW (torch-optimi) with fully decoupled weight decay and no decay on biases and norms.

"Fully decoupled" (the mmBERT / ModernBERT recipe): each step multiplies a decayed weight by

    w <- w * (1 - weight_decay * lr_t / max_lr)

so ``weight_decay`` is a per-step rate at peak LR, independent of the LR's size (AdamW-style decay, ``w * (1 -
lr_t * weight_decay)``, would make the recipe's 8e-5 about 1250x weaker at lr 8e-4). In torch-optimi that is
``decouple_lr=True, max_lr=<peak lr>``. StableAdamW also scales each tensor's step by ``1 / max(1, RMS(g^2 / v))``,
which replaces gradient clipping.
"""

from __future__ import annotations

import torch
from optimi import StableAdamW

from mmbert_train.config import OptimizerConfig


def param_groups(model: torch.nn.Module, weight_decay: float, no_decay: list[str]) -> list[dict]:
    """Two groups: parameters whose name contains one of ``no_decay`` (biases, norm weights) get no decay.

    Tied parameters (the decoder weight is the embedding) appear once, as `named_parameters` deduplicates.
    """
    decay, plain = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (plain if any(tag in name for tag in no_decay) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0})
    return groups


def build_optimizer(
    model: torch.nn.Module, cfg: OptimizerConfig, *, on_cuda: bool | None = None
) -> StableAdamW:
    """StableAdamW over ``model`` as the recipe's ``optimizer:`` section says.

    ``on_cuda``: whether the parameters will live on CUDA when the optimizer steps (the model may still be on
    the CPU when the optimizer is built). torch-optimi's Triton kernels only run on CUDA, so they are switched off
    otherwise; on CUDA torch-optimi chooses.
    """
    if cfg.name != "stableadamw":  # the schema allows only this today; keep the failure explicit if it grows
        raise ValueError(f"optimizer.name {cfg.name!r} is not supported")
    if on_cuda is None:
        on_cuda = torch.cuda.is_available()
    return StableAdamW(
        param_groups(model, cfg.weight_decay, list(cfg.no_decay)),
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        decouple_lr=cfg.decouple_lr,
        max_lr=cfg.max_lr if cfg.max_lr is not None else cfg.lr,
        triton=None if on_cuda else False,
    )
