"""The optimizer state of a Composer checkpoint, renamed onto our parameter names.

Phase chaining carries StableAdamW's moments from one phase to the next (the authors' configs load the previous
phase with Composer's ``load_path`` and keep the optimizer state). The state is keyed by the SOURCE model's
parameter names (FlexBert's or ours, possibly under DDP / compile wrappers); we rename it with the same key map
that renames the weights (:mod:`.keys`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .detect import DCP_DIR
from .errors import CheckpointError
from .keys import strip_wrappers
from .reader import open_checkpoint


def optimizer_state_by_name(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, Any] | None:
    """The optimizer state of a Composer checkpoint, keyed by our parameter names (``model.<HF key>``), or None
    when the source has none (a Hugging Face directory, a weights-only checkpoint)."""
    path = Path(path)
    checkpoint = open_checkpoint(path, trust_pickle=trust_pickle)
    if checkpoint.format == DCP_DIR:
        raise CheckpointError(
            f"{path}: reading the optimizer state of a sharded (torch.distributed.checkpoint) checkpoint is not "
            "supported; set init_from.load_optimizer_state=false to start the optimizer fresh from its weights"
        )
    optimizers = checkpoint.composer_optimizers()
    if not optimizers:
        return None
    if len(optimizers) != 1:
        raise CheckpointError(f"{path}: expected one optimizer state, found {sorted(optimizers)}")
    ((name, optim_state),) = optimizers.items()
    per_param = optim_state.get("state", {})
    if per_param and not all(isinstance(k, str) for k in per_param):
        raise CheckpointError(
            f"{path}: optimizer {name!r} keys its state by parameter index, not by name, so it cannot be mapped "
            "onto this model safely; set init_from.load_optimizer_state=false"
        )
    to_hf = {strip_wrappers(k): v for k, v in checkpoint.composer.to_hf.items()}

    def our_name(key: str) -> str | None:  # optimizer keys may carry wrappers (DDP, compile) of their own
        hf_key = to_hf.get(strip_wrappers(key))
        return None if hf_key is None else "model." + hf_key

    renamed = {our_name(k): v for k, v in per_param.items() if our_name(k) is not None}
    groups = []
    for group in optim_state.get("param_groups", []):
        group = dict(group)
        group["params"] = [our_name(k) for k in group.get("params", []) if our_name(k) is not None]
        groups.append(group)
    return {"state": renamed, "param_groups": groups}
