"""The mmBERT / ModernBERT encoder: config + presets, the model and its attention backends.

Checkpoint I/O is :mod:`mmbert_train.checkpoints`; ``load_pretrained`` / ``save_pretrained`` are re-exported here.

Public API (Contract 1 in docs/architecture.md)::

    from mmbert_train.model import ModelConfig, MMBertForMaskedLM, load_pretrained, save_pretrained
"""

from __future__ import annotations

from .config import ModelConfig
from .modeling import MaskedLMOutput, MMBertForMaskedLM

__all__ = ["ModelConfig", "MMBertForMaskedLM", "MaskedLMOutput", "load_pretrained", "save_pretrained"]


def __getattr__(name: str):
    # Checkpoint I/O lives in mmbert_train.checkpoints (safetensors / transformers helpers); import on first use.
    if name in ("load_pretrained", "save_pretrained"):
        from .. import checkpoints

        return getattr(checkpoints, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
