"""One way in: `open_checkpoint` reads every format (see :mod:`.detect`) into a `Checkpoint`: lazy weights in
HF key names (memory-mapped where the format allows, one tensor per access for sharded checkpoints), the model
config, and the optimizer state of Composer files. Everything that reads a checkpoint (load_pretrained, init_from,
eval-mlm, export, merge, fill-mask) goes through it, so each accepts every format."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from ..model.config import ModelConfig
from .composer import ComposerCheckpoint
from .config import config_from_flexbert, config_from_hf, config_from_recorded
from .dcp import DcpStateDict
from .detect import COMPOSER_FILE, DCP_DIR, detect_format
from .errors import CheckpointError
from .hf import hf_config_path, open_hf_weights, read_hf_config


@dataclass
class Checkpoint:
    """An opened checkpoint. ``weights``: a lazy ``Mapping[str, Tensor]`` in HF key names, never holding the
    tied ``decoder.weight``; readers also answer ``shape(key)`` / ``dtype(key)`` without reading the tensor."""

    path: Path
    format: str
    _open_weights: Callable[[], Mapping[str, Tensor]] = field(repr=False)
    composer: ComposerCheckpoint | None = field(default=None, repr=False)  # the opened .pt, if one

    @functools.cached_property
    def weights(self) -> Mapping[str, Tensor]:
        """Opened on first use (reading only the config of an HF directory needs no weights)."""
        return self._open_weights()

    def model_config(self, **overrides: Any) -> ModelConfig:
        """The checkpoint's `ModelConfig`; ``overrides`` replace (or supply) fields."""
        where = str(self.path)
        if self.format == DCP_DIR:
            fields = self.weights.recorded_model_config()
            if fields is None:
                raise CheckpointError(
                    f"{where}: this sharded checkpoint has no ModelConfigRecorder state "
                    "(state.callbacks.ModelConfigRecorder.model_config), so its architecture is unknown"
                )
            return config_from_recorded(fields, where, overrides)
        if self.format == COMPOSER_FILE:
            recorded = self.composer.recorded_model_config() if self.composer.layout == "ours" else None
            if recorded is not None:
                return config_from_recorded(recorded, where, overrides)
            return config_from_flexbert(self.composer.flexbert_config(), self.weights, self.path, overrides)
        where = str(hf_config_path(self.path, self.format))
        return config_from_hf(read_hf_config(self.path, self.format), where, overrides)

    def composer_optimizers(self) -> Mapping[str, Any] | None:
        """``state['optimizers']`` of a Composer ``.pt`` (keyed by the source's parameter names), else None."""
        return self.composer.optimizers() if self.composer is not None else None


def open_checkpoint(
    path: str | os.PathLike, *, trust_pickle: bool = False, role: str = "checkpoint"
) -> Checkpoint:
    """Open the checkpoint at ``path`` (any format we read); ``role`` names it in errors ("base", "models[2]")."""
    path = Path(path)
    fmt = detect_format(path, role)
    if fmt == DCP_DIR:
        state = DcpStateDict(path)
        return Checkpoint(path, fmt, lambda: state)
    if fmt == COMPOSER_FILE:
        composer = ComposerCheckpoint(path, trust_pickle=trust_pickle)
        return Checkpoint(path, fmt, lambda: composer.weights, composer)
    return Checkpoint(path, fmt, lambda: open_hf_weights(path, fmt, trust_pickle=trust_pickle))


def open_state_dict(path: str | os.PathLike, *, trust_pickle: bool = False) -> Mapping[str, Tensor]:
    """The lazy weights of the checkpoint at ``path`` in HF key names (no ``decoder.weight``)."""
    return open_checkpoint(path, trust_pickle=trust_pickle).weights


def read_model_config(
    path: str | os.PathLike, *, trust_pickle: bool = False, **overrides: Any
) -> ModelConfig:
    """The `ModelConfig` of the checkpoint at ``path``; ``overrides`` replace (or supply) fields."""
    return open_checkpoint(path, trust_pickle=trust_pickle).model_config(**overrides)
