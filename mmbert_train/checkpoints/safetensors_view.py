"""Zero-copy, memory-mapped reading of ``.safetensors`` files (one file or the shards of a sharded checkpoint).

The format: an 8-byte little-endian header length ``n``, a JSON header of ``n`` bytes (``{name: {"dtype",
"shape", "data_offsets": [begin, end]}}``, offsets relative to the end of the header), then the tensors' bytes.
The header is checked against the file's size before anything is mapped, so a truncated file is a
`CheckpointError` naming the file and the first tensor that is cut off.

Each tensor is a view into a private memory map (``ACCESS_COPY``); :meth:`SafetensorsStateDict.release` hands
the touched pages back (``MADV_DONTNEED``), so a merge that reads tensor after tensor never holds more than the
chunk it works on. (Mapped file pages count in a process's RSS until they are released or the map is closed;
safetensors' own ``safe_open`` keeps them.)
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor

from .errors import CheckpointError
from .keys import EMBEDDINGS, TIED_KEY

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


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def read_header(path: Path) -> tuple[int, dict]:
    """``(data start, header)`` of a safetensors file, checked against the file's size."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated or not a safetensors file ({size} bytes)")
        length = int.from_bytes(head, "little")
        if 8 + length > size:
            raise CheckpointError(
                f"{path}: truncated or not a safetensors file (its header says {length} bytes, the file has "
                f"{size})"
            )
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path}: not a safetensors file (bad header: {err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (the header is not a JSON object)")
    data = size - 8 - length
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(info["shape"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(
                f"{path}: tensor {name}: bad header entry {info!r} (or unsupported dtype)"
            ) from None
        if end - begin != _numel(shape) * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {name}: {end - begin} bytes for shape {list(shape)}")
        if end > data:
            raise CheckpointError(
                f"{path}: truncated: tensor {name} ends at byte {8 + length + end}, the file has {size}"
            )
    return 8 + length, header


class SafetensorsStateDict(Mapping[str, Tensor]):
    """The tensors of one or more ``.safetensors`` files as zero-copy views into private memory maps.

    A ``decoder.weight`` next to the token embeddings is left out (it is the tied embedding matrix).
    """

    def __init__(self, files: list[Path]):
        self.files = [Path(f) for f in files]
        self._maps: list[mmap.mmap] = []
        self._where: dict[
            str, tuple[int, torch.dtype, tuple[int, ...], int]
        ] = {}  # map, dtype, shape, offset
        for path in self.files:
            if not path.is_file():
                raise CheckpointError(f"{path}: no such file")
            start, header = read_header(path)
            with open(path, "rb") as handle:
                # ACCESS_COPY: a private map, writable as far as torch is concerned, never written to
                self._maps.append(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY))
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                if name in self._where:
                    raise CheckpointError(
                        f"{path}: tensor {name} is also in {self.files[self._where[name][0]]}"
                    )
                dtype = SAFETENSORS_DTYPES[info["dtype"]]
                offset = start + info["data_offsets"][0]
                self._where[name] = (len(self._maps) - 1, dtype, tuple(info["shape"]), offset)
        if TIED_KEY in self._where and EMBEDDINGS in self._where:
            del self._where[TIED_KEY]

    def __getitem__(self, key: str) -> Tensor:
        if key not in self._where:
            raise KeyError(key)
        which, dtype, shape, offset = self._where[key]
        numel = _numel(shape)
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
