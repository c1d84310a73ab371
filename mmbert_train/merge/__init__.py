"""Checkpoint merging: TIES over the decay variants (mmBERT-base), exponentially weighted averaging of one run's
last checkpoints (mmBERT-small), plain weighted averages. See docs/merging.md.

- :mod:`.methods`: the arithmetic on tensors and state dicts (``ties_merge``, ``linear_merge``, ``ema_merge``);
- checkpoints are read through :mod:`mmbert_train.checkpoints` (lazy, memory-mapped);
- :mod:`.writer`: the streamed safetensors output (config and tokenizer are written by :mod:`mmbert_train.checkpoints`);
- :mod:`.engine`: ``merge_checkpoints``, the streaming merge of checkpoints on disk;
- :mod:`.config`: the ``MergeConfig`` recipe schema and ``run_config`` (``mmbert merge`` is :mod:`mmbert_train.commands.merge`).
"""

from __future__ import annotations

from .config import MergeConfig, run_config
from .engine import MergeError, merge_checkpoints
from .methods import ema_merge, ema_weights, linear_merge, ties_merge

__all__ = [
    "MergeConfig",
    "MergeError",
    "ema_merge",
    "ema_weights",
    "linear_merge",
    "run_config",
    "merge_checkpoints",
    "ties_merge",
]
