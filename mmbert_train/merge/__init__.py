"""Checkpoint merging: TIES over the decay variants (mmBERT-base), exponentially weighted averaging of one run's
last checkpoints (mmBERT-small), plain weighted averages. See docs/merging.md.

- :mod:`.methods`: the arithmetic on tensors and state dicts (``ties_merge``, ``linear_merge``, ``ema_merge``);
- :mod:`.sources`: lazy memory-mapped readers for safetensors / Hugging Face dirs, FSDP (DCP) dirs, Composer files;
- :mod:`.writer`: streamed safetensors output, atomic output directories, tokenizer files;
- :mod:`.engine`: ``merge_checkpoints``, the streaming merge of checkpoints on disk;
- :mod:`.cli`: ``mmbert merge`` and the ``MergeConfig`` recipe schema.
"""

from __future__ import annotations

from .cli import MergeConfig, main
from .engine import MergeError, merge_checkpoints
from .methods import ema_merge, ema_weights, linear_merge, ties_merge

__all__ = [
    "MergeConfig",
    "MergeError",
    "ema_merge",
    "ema_weights",
    "linear_merge",
    "main",
    "merge_checkpoints",
    "ties_merge",
]
