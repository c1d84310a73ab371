"""Lazy, memory-mapped access to the weights of a checkpoint, in Hugging Face key names.

What a merge or an export can read:

- a Hugging Face directory (``model.safetensors`` or a sharded ``model.safetensors.index.json``) or a single
  ``.safetensors`` file: :class:`SafetensorsStateDict`, our own reader. Each tensor is a zero-copy view into a
  private memory map; :meth:`SafetensorsStateDict.release` hands the touched pages back (``MADV_DONTNEED``), so
  a merge that reads tensor after tensor never holds more than the chunk it works on. (Mapped file pages count
  in a process's RSS until they are released or the map is closed; safetensors' own ``safe_open`` keeps them.)
- a sharded (FSDP) checkpoint directory as Composer writes it with ``torch.distributed.checkpoint`` (a
  ``.metadata`` file plus ``__<rank>_0.distcp`` shards): :class:`DcpStateDict` loads one tensor per access.
- anything else (our Composer ``.pt`` files, published Composer checkpoints with FlexBert names,
  ``pytorch_model.bin``): ``mmbert_train.checkpoints.formats.open_state_dict``.
"""

from __future__ import annotations

import json
import mmap
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import CheckpointError

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}

TIED_DECODER = "decoder.weight"  # alias of the token embeddings; never a separate tensor in our key space
EMBEDDINGS = "model.embeddings.tok_embeddings.weight"


class SafetensorsStateDict(Mapping[str, Tensor]):
    """The tensors of one or more ``.safetensors`` files as zero-copy views into private memory maps."""

    def __init__(self, files: list[Path]):
        self.files = files
        self._maps: list[mmap.mmap] = []
        self._where: dict[
            str, tuple[int, torch.dtype, tuple[int, ...], int]
        ] = {}  # map, dtype, shape, offset
        for path in files:
            with open(path, "rb") as handle:
                head = handle.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
                size = int.from_bytes(head, "little")
                try:
                    header = json.loads(handle.read(size))
                except (ValueError, UnicodeDecodeError) as err:
                    raise CheckpointError(f"{path}: not a safetensors file (bad header: {err})") from None
                # ACCESS_COPY: a private map, writable as far as torch is concerned, never written to
                self._maps.append(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY))
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                if info["dtype"] not in SAFETENSORS_DTYPES:
                    raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
                if name in self._where:
                    raise CheckpointError(f"{path}: tensor {name} is also in {files[self._where[name][0]]}")
                begin = info["data_offsets"][0]
                dtype = SAFETENSORS_DTYPES[info["dtype"]]
                self._where[name] = (len(self._maps) - 1, dtype, tuple(info["shape"]), 8 + size + begin)
        if TIED_DECODER in self._where and EMBEDDINGS in self._where:
            del self._where[TIED_DECODER]

    @classmethod
    def from_path(cls, path: Path) -> SafetensorsStateDict:
        if path.is_file():
            return cls([path])
        index = path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return cls([path / name for name in sorted(set(weight_map.values()))])
        return cls([path / "model.safetensors"])

    def __getitem__(self, key: str) -> Tensor:
        if key not in self._where:
            raise KeyError(key)
        which, dtype, shape, offset = self._where[key]
        numel = 1
        for n in shape:
            numel *= n
        if numel == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(self._maps[which], dtype=dtype, count=numel, offset=offset).view(shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._where[key][2]

    def dtype(self, key: str) -> torch.dtype:
        return self._where[key][1]

    def release(self) -> None:
        """Drop the mapped pages from this process (the page cache keeps them; views stay valid)."""
        for mapped in self._maps:
            mapped.madvise(mmap.MADV_DONTNEED)


# ---------------------------------------------------------------------------------- torch.distributed.checkpoint

DCP_MODEL_PREFIX = "state.model."
DCP_CONFIG_PREFIX = "state.callbacks.ModelConfigRecorder.model_config."


def is_dcp_dir(path: Path) -> bool:
    return path.is_dir() and (path / ".metadata").is_file()


def _dcp_load(path: Path, state_dict: dict[str, Any]) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state_dict, storage_reader=dcp.FileSystemReader(str(path)))


class DcpStateDict(Mapping[str, Tensor]):
    """The model weights of a ``torch.distributed.checkpoint`` directory, one tensor loaded per access.

    Composer saves ``{"state": state.state_dict(), ...}``; DCP flattens it, so the weights are the entries
    ``state.model.<Composer model key>``. Loading needs no process group and reassembles every shard.
    """

    def __init__(self, path: Path):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        from .formats import flexbert_to_hf_key

        self.path = path
        try:
            metadata = dcp.FileSystemReader(str(path)).read_metadata()
        except Exception as err:  # noqa: BLE001 (a corrupt .metadata can fail in many ways)
            raise CheckpointError(
                f"{path}: cannot read the torch.distributed.checkpoint metadata: {err}"
            ) from None
        self._items = metadata.state_dict_metadata
        self._fqn: dict[str, str] = {}
        for fqn, info in self._items.items():
            if fqn.startswith(DCP_MODEL_PREFIX) and isinstance(info, TensorStorageMetadata):
                # Composer model key -> HF key: ours ("model." + HF key) or FlexBert's, wrappers stripped
                key = flexbert_to_hf_key(fqn.removeprefix(DCP_MODEL_PREFIX))
                if key is not None:  # None: the tied decoder weight
                    self._fqn[key] = fqn
        if not self._fqn:
            raise CheckpointError(
                f"{path}: no model weights in this torch.distributed.checkpoint directory "
                f"(expected entries named {DCP_MODEL_PREFIX}*, as Composer saves them)"
            )

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

    def model_config(self) -> dict[str, Any] | None:
        """The ``ModelConfig`` fields recorded by the trainer's ``ModelConfigRecorder`` callback, if any."""
        fqns = [fqn for fqn in self._items if fqn.startswith(DCP_CONFIG_PREFIX)]
        if not fqns:
            return None
        values: dict[str, Any] = dict.fromkeys(fqns)
        _dcp_load(self.path, values)
        return {fqn.removeprefix(DCP_CONFIG_PREFIX): value for fqn, value in values.items()}


# ----------------------------------------------------------------------------------------------------- dispatch


def open_checkpoint(
    path: str | Path, *, trust_pickle: bool = False, role: str = "checkpoint"
) -> Mapping[str, Tensor]:
    """A lazy Mapping of HF key -> tensor for any checkpoint we read; ``role`` names it in errors."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{role} not found: {path}")
    if path.suffix == ".safetensors" or (
        path.is_dir()
        and ((path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file())
    ):
        return SafetensorsStateDict.from_path(path)
    if is_dcp_dir(path):
        return DcpStateDict(path)
    from .formats import open_state_dict

    return open_state_dict(path, trust_pickle=trust_pickle)


def hf_config_of(
    path: str | Path, state: Mapping[str, Tensor] | None = None, *, trust_pickle: bool = False
) -> dict[str, Any] | None:
    """The Hugging Face ``config.json`` content that goes with a checkpoint, or None when it has none."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text())
    if path.suffix == ".safetensors" and (path.parent / "config.json").is_file():
        return json.loads((path.parent / "config.json").read_text())
    if isinstance(state, DcpStateDict):
        fields = state.model_config()
        if fields is None:
            return None
        from mmbert_train.model import ModelConfig

        return ModelConfig.from_dict(fields).to_hf_dict()
    from .formats import read_model_config

    return read_model_config(path, trust_pickle=trust_pickle).to_hf_dict()


def load_checkpoint(path: str | Path, *, trust_pickle: bool = False):
    """Our ``MMBertForMaskedLM`` (fp32, eval mode) from any checkpoint ``mmbert export`` accepts."""
    import torch

    from .formats import MMBertForMaskedLM, ModelConfig, check_state_dict, load_pretrained

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not is_dcp_dir(path):
        return load_pretrained(path, trust_pickle=trust_pickle)
    state = DcpStateDict(path)
    fields = state.model_config()
    if fields is None:
        raise CheckpointError(
            f"{path}: this sharded checkpoint has no ModelConfigRecorder state "
            "(state.callbacks.ModelConfigRecorder.model_config), so its architecture is unknown"
        )
    with torch.device("meta"):
        model = MMBertForMaskedLM(ModelConfig.from_dict(fields))
    check_state_dict(model, state, str(path))
    model.to_empty(device="cpu")
    model.load_state_dict({key: state[key].to(torch.float32) for key in state}, strict=True)
    return model.eval()


_BATCH = re.compile(r"ba(\d+)")


def checkpoint_order(path: Path) -> tuple:
    """Sort key for checkpoints of one run: Composer's batch count (``ep0-ba1200-rank0.pt``), then the name."""
    match = _BATCH.search(path.name)
    return (int(match.group(1)) if match else -1, path.name)
