"""Checkpoint fixtures for tests and benchmarks: Hugging Face directories and FSDP (DCP) checkpoints with
random weights, written the way transformers and Composer write them. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mmbert_train.model import ModelConfig


def hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of transformers' ``ModernBertForMaskedLM`` for ``config`` (no tied decoder)."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    with torch.device("meta"):
        model = ModernBertForMaskedLM(ModernBertConfig(**config.to_hf_dict()))
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "decoder.weight"}


def random_state(
    config: ModelConfig, seed: int, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """A state dict in HF key names with N(0, 0.02^2) weights (norm weights around 1) from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in hf_shapes(config).items():
        t = torch.randn(shape, generator=gen) * 0.02
        if "norm" in key:
            t += 1.0
        state[key] = t.to(dtype)
    return state


def write_hf_dir(
    out: Path, config: ModelConfig, state: dict[str, torch.Tensor], tokenizer: Path | None = None
):
    """``out/config.json`` + ``out/model.safetensors`` (+ tokenizer files): what transformers' save_pretrained
    writes, without building the model (fast for large fixtures)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"), {"format": "pt"})
    (out / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
    if tokenizer is not None:
        from mmbert_train.checkpoints import write_tokenizer

        write_tokenizer(Path(tokenizer), out, config)
    return out


def save_with_transformers(out: Path, config: ModelConfig, seed: int) -> Path:
    """A ``ModernBertForMaskedLM`` with random weights (every tensor perturbed), saved by transformers itself."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    torch.manual_seed(seed)
    model = ModernBertForMaskedLM(ModernBertConfig(**config.to_hf_dict()))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    model.save_pretrained(str(out))
    return Path(out)


def write_dcp_checkpoint(out: Path, config: ModelConfig, state: dict[str, torch.Tensor]) -> Path:
    """A sharded checkpoint directory as Composer writes it under FSDP: ``torch.distributed.checkpoint`` of
    ``{"state": {"model": {"model." + HF key: tensor}, "callbacks": {"ModelConfigRecorder": {...}}, ...}}``
    (here from one process, so one shard)."""
    import warnings

    import torch.distributed.checkpoint as dcp

    composer_state = {
        "state": {
            "model": {"model." + k: v for k, v in state.items()},
            "optimizers": {"StableAdamW": {"state": {}, "param_groups": [{"lr": 8e-4}]}},
            "callbacks": {"ModelConfigRecorder": {"model_config": config.to_dict()}},
            "timestamp": {"batch": 10},
        },
        "rng": [{"torch": 1}],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(composer_state, storage_writer=dcp.FileSystemWriter(str(out)))
    return Path(out)


def write_composer_checkpoint(out: Path, config: ModelConfig, state: dict[str, torch.Tensor]) -> Path:
    """One of our Composer checkpoints as the trainer writes it: ``state['model']`` keyed ``"model." + HF key``,
    the model config under ``state['callbacks']['ModelConfigRecorder']['model_config']``."""
    checkpoint = {
        "state": {
            "model": {"model." + k: v for k, v in state.items()},
            "callbacks": {"ModelConfigRecorder": {"model_config": config.to_dict()}},
        },
        "rng": [],
    }
    torch.save(checkpoint, out)
    return Path(out)
