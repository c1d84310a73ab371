"""Sharded (FSDP) checkpoints written with ``torch.distributed.checkpoint``, as Composer writes them.

A directory with a ``.metadata`` file plus ``__<rank>_0.distcp`` shards. Composer saves ``{"state":
state.state_dict(), ...}`` and DCP flattens the nested dicts, so the weights are the entries
``state.model.<Composer model key>`` and the trainer's recorded model config is
``state.callbacks.ModelConfigRecorder.model_config.<field>``. Loading needs no process group and reassembles every
shard; :class:`DcpStateDict` loads one tensor per access.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import CheckpointError
from .keys import composer_to_hf_keys

DCP_MODEL_PREFIX = "state.model."
DCP_CONFIG_PREFIX = "state.callbacks.ModelConfigRecorder.model_config."


def _dcp_load(path: Path, state_dict: dict[str, Any]) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        try:
            dcp.load(state_dict, storage_reader=dcp.FileSystemReader(str(path)))
        except (Exception, CheckpointException) as err:  # a missing or cut shard fails in many ways
            reason = str(err).strip().splitlines()[-1][:300] if str(err).strip() else ""
            raise CheckpointError(
                f"{path}: cannot read {sorted(state_dict)[:3]} from this torch.distributed.checkpoint "
                f"directory (a shard missing or truncated?): {err.__class__.__name__}: {reason}"
            ) from None


class DcpStateDict(Mapping[str, Tensor]):
    """The model weights of a ``torch.distributed.checkpoint`` directory in HF key names, one tensor per access."""

    def __init__(self, path: Path):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self.path = Path(path)
        try:
            metadata = dcp.FileSystemReader(str(path)).read_metadata()
        except Exception as err:  # noqa: BLE001 (a corrupt .metadata can fail in many ways)
            raise CheckpointError(
                f"{path}: cannot read the torch.distributed.checkpoint metadata: {err}"
            ) from None
        self._items = metadata.state_dict_metadata
        model = {
            fqn.removeprefix(DCP_MODEL_PREFIX): fqn
            for fqn, info in self._items.items()
            if fqn.startswith(DCP_MODEL_PREFIX) and isinstance(info, TensorStorageMetadata)
        }
        if not model:
            raise CheckpointError(
                f"{path}: no model weights in this torch.distributed.checkpoint directory "
                f"(expected entries named {DCP_MODEL_PREFIX}*, as Composer saves them)"
            )
        to_hf = composer_to_hf_keys(model, f"{path}: {DCP_MODEL_PREFIX}*")
        self._fqn = {hf: model[key] for key, hf in to_hf.items()}

    def __getitem__(self, key: str) -> Tensor:
        fqn = self._fqn[key]
        info = self._items[fqn]
        tensor = torch.empty(tuple(info.size), dtype=info.properties.dtype)
        _dcp_load(self.path, {fqn: tensor})
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self._fqn)

    def __len__(self) -> int:
        return len(self._fqn)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._items[self._fqn[key]].size)

    def dtype(self, key: str) -> torch.dtype:
        return self._items[self._fqn[key]].properties.dtype

    def recorded_model_config(self) -> dict[str, Any] | None:
        """The ``ModelConfig`` fields recorded by the trainer's ``ModelConfigRecorder`` callback, if any."""
        fqns = [fqn for fqn in self._items if fqn.startswith(DCP_CONFIG_PREFIX)]
        if not fqns:
            return None
        values: dict[str, Any] = dict.fromkeys(fqns)
        _dcp_load(self.path, values)
        return {fqn.removeprefix(DCP_CONFIG_PREFIX): value for fqn, value in values.items()}
