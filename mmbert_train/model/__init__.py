"""The mmBERT / ModernBERT encoder: config + presets, the model, attention backends and checkpoint I/O.

Public API (Contract 1 in docs/architecture.md)::

    from mmbert_train.model import ModelConfig, MMBertForMaskedLM, load_pretrained, save_pretrained
    from mmbert_train.model import compile_regions      # regional torch.compile, in place
"""

from __future__ import annotations

from .compile import compile_regions
from .config import ModelConfig
from .modeling import MaskedLMOutput, MMBertForMaskedLM

__all__ = [
    "ModelConfig",
    "MMBertForMaskedLM",
    "MaskedLMOutput",
    "compile_regions",
    "load_pretrained",
    "save_pretrained",
]


def __getattr__(name: str):
    # Checkpoint I/O pulls in safetensors/transformers helpers; import it on first use only.
    if name in ("load_pretrained", "save_pretrained"):
        from . import checkpoints

        return getattr(checkpoints, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
