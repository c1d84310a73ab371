"""Opening pickle checkpoints (Composer ``.pt``, ``pytorch_model.bin``) without running code from them.

``torch.load(weights_only=True)`` plus an explicit allow-list of the harmless types Composer writes besides
tensors (numpy arrays and dtypes for RNG state, ``datetime.timedelta``, ``TorchVersion``). Anything else is
refused with the name of the type unless the caller passes ``trust_pickle=True`` (full unpickling runs code from
the file, so it warns). Tensors are memory-mapped, so opening a multi-GB checkpoint reads only what is used.
A file that is not a complete PyTorch archive (truncated by a full disk or a killed copy) is reported as such.
"""

from __future__ import annotations

import datetime
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError


def allowed_globals() -> list:
    """Types a Composer checkpoint holds besides tensors and builtins (RNG state, timestamps, versions)."""
    import numpy as np
    from torch.torch_version import TorchVersion

    core = getattr(np, "_core", None) or np.core
    allowed = [np.ndarray, np.dtype, core.multiarray._reconstruct, datetime.timedelta, TorchVersion]
    for name in ("bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"):
        allowed.append(type(np.dtype(getattr(np, name))))
    for name in ("float16", "float32", "float64", "str_", "object_"):
        allowed.append(type(np.dtype(getattr(np, name))))
    return allowed


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    """The error for a file torch.load cannot read at all (as opposed to one it refuses to trust)."""
    if not zipfile.is_zipfile(path):
        size = path.stat().st_size
        return CheckpointError(
            f"{path}: truncated or not a PyTorch checkpoint ({size} bytes, not a complete torch.save archive: "
            f"{error.__class__.__name__}: {str(error)[:200]})"
        )
    return CheckpointError(
        f"{path}: a damaged PyTorch checkpoint ({error.__class__.__name__}: {str(error)[:300]})"
    )


def load_pickle(path: str | Path, *, trust_pickle: bool = False) -> Any:
    """``torch.load`` a pickle checkpoint memory-mapped, with weights_only and the allow-list unless trusted."""
    path = Path(path)
    # torch.save has written zip archives (which can be memory-mapped) since torch 1.6; older files cannot
    mmap = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # an UnpicklingError naming the refused global, a truncated or foreign file
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if refused is None and (not mmap or "Weights only load failed" not in str(error)):
            raise _unreadable(path, error) from error
        if not trust_pickle:
            reason = (
                f"it holds {refused.group(1)}"
                if refused
                else f"{error.__class__.__name__}: {str(error)[:300]}"
            )
            raise CheckpointError(
                f"{path}: cannot be opened safely with torch.load(weights_only=True) and the allow-list of "
                f"Composer's types ({reason}). "
                "If you trust this file, pass trust_pickle=True (full unpickling can run code from the file)."
            ) from error
    warnings.warn(
        f"{path}: loading with full unpickling (trust_pickle=True); this runs any code the file contains",
        stacklevel=3,
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as error:
        raise _unreadable(path, error) from error
