"""A merge recipe (``recipes/{small,base}_merge.yaml``) as a dataclass, and running it.

``mmbert merge`` (:mod:`mmbert_train.commands.merge`) fills :class:`MergeConfig` from a recipe or from flags.
"""

from __future__ import annotations

import glob
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from ..checkpoints import checkpoint_order
from .engine import MergeError, merge_checkpoints
from .methods import DEFAULT_CHUNK_NUMEL

_GLOB_CHARS = set("*?[")


@dataclass
class MergeConfig:
    """A merge recipe. Paths are relative to the directory ``mmbert merge`` runs in.

    ``models`` are the checkpoints to merge; for ``ema`` (and ``linear``) entries may be glob patterns, whose
    matches are ordered by Composer's batch count (``ep0-ba4000-rank0.pt``), oldest first, and ``last`` keeps the
    newest ``last`` of them. ``weights`` go with ``models`` (TIES normalises them per entry by the models that
    agree; ``linear`` by their sum); ``ema`` sets them to ``beta^(N-k)``.
    """

    method: Literal["ties", "linear", "ema"]
    models: list[str]
    out: str
    base: str | None = None
    density: float = 0.5
    weights: list[float] | None = None
    scale: float = 1.0
    beta: float = 0.5
    last: int | None = None
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    tokenizer: str | None = None
    trust_pickle: bool = False

    def __post_init__(self) -> None:
        if self.last is not None and self.last < 1:
            raise ValueError(f"last must be >= 1, got {self.last}")
        if self.method == "ties" and self.base is None:
            raise ValueError("method 'ties' needs `base` (the checkpoint the task vectors are taken against)")


def expand_models(patterns: list[str], last: int | None) -> list[str]:
    """Glob patterns expanded (matches in training order), then the newest ``last`` entries."""
    paths: list[str] = []
    for pattern in patterns:
        if _GLOB_CHARS & set(pattern):
            matches = sorted((Path(p) for p in glob.glob(pattern)), key=checkpoint_order)
            if not matches:
                raise MergeError(f"no checkpoint matches {pattern!r}")
            paths.extend(str(p) for p in matches)
        else:
            paths.append(pattern)
    if last is not None:
        if last > len(paths):
            raise MergeError(f"last: {last} asks for more checkpoints than the {len(paths)} given: {paths}")
        paths = paths[-last:]
    return paths


def run_config(
    config: MergeConfig, *, overwrite=False, progress=True, chunk_numel=DEFAULT_CHUNK_NUMEL
) -> Path:
    models = expand_models(config.models, config.last)
    weights = config.weights
    if weights is not None and config.last is not None and len(weights) != len(models):
        raise MergeError(f"{len(weights)} weights for the {len(models)} models left after last={config.last}")
    settings = {**asdict(config), "models": models, "weights": weights}
    del settings["last"]  # applied above, by expand_models
    return merge_checkpoints(
        **settings, overwrite=overwrite, chunk_numel=chunk_numel, progress=progress, record=asdict(config)
    )
