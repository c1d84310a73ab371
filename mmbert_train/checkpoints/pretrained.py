"""`load_pretrained`: an `MMBertForMaskedLM` from a checkpoint of any format, with every key checked first."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from ..model.modeling import MMBertForMaskedLM
from .errors import CheckpointError
from .keys import shape_of
from .reader import open_checkpoint


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise `CheckpointError` naming every missing / unexpected key and every shape mismatch."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{key}: checkpoint has shape {shape_of(state, key)}, the model expects {expected[key]}"
        for key in expected
        if key in state and shape_of(state, key) != expected[key]
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:10]}{' …' if len(missing) > 10 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:10]}{' …' if len(unexpected) > 10 else ''}")
    if wrong:
        problems.append("wrong shapes: " + "; ".join(wrong[:10]))
    if problems:
        raise CheckpointError(f"{where}: weights do not fit the model config: " + " | ".join(problems))


def load_pretrained(
    path: str | os.PathLike, *, trust_pickle: bool = False, **config_overrides: Any
) -> MMBertForMaskedLM:
    """An `MMBertForMaskedLM` (fp32, CPU, eval mode) with the weights of a checkpoint of any format we read:
    a Hugging Face directory (safetensors, sharded safetensors, ``pytorch_model.bin``), a ``.safetensors`` file,
    a Composer ``.pt`` (ours or FlexBert's) or a sharded FSDP (``torch.distributed.checkpoint``) directory.

    ``config_overrides`` replace config fields, e.g. ``attn_backend="sdpa"`` or the RoPE thetas / window of a
    checkpoint that does not record them.
    """
    checkpoint = open_checkpoint(path, trust_pickle=trust_pickle)
    config = checkpoint.model_config(**config_overrides)
    state = checkpoint.weights
    with torch.device("meta"):
        model = MMBertForMaskedLM(config)
    check_state_dict(model, state, str(path))
    model.to_empty(device="cpu")
    model.load_state_dict({key: state[key].to(torch.float32) for key in state}, strict=True)
    return model.eval()
