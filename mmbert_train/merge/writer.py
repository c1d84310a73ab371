"""Writing the merged ``model.safetensors`` as a stream (config and tokenizer: :mod:`mmbert_train.checkpoints`).

:class:`StreamingSafetensorsWriter` writes the safetensors header first (every name, dtype and shape is known
before the merge starts) and then each tensor's bytes as they are produced, chunk by chunk, so the merged model
never has to exist in memory. The file format: an 8-byte little-endian header length, the JSON header (padded
with spaces to a multiple of 8 bytes), then the tensors' bytes back to back in header order.

The output directory is published with `mmbert_train.atomic.atomic_output_dir`: a crashed or interrupted run
leaves no half-written model behind.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoints import SAFETENSORS_DTYPES

_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


class StreamingSafetensorsWriter:
    """Write ``entries`` (name, dtype, shape), in that order, to ``path``; feed the bytes with :meth:`write`."""

    def __init__(
        self, path: Path, entries: Sequence[tuple[str, torch.dtype, tuple[int, ...]]], metadata=None
    ):
        header: dict = {"__metadata__": {"format": "pt", **(metadata or {})}}
        offset = 0
        self._sizes = []
        for name, dtype, shape in entries:
            numel = 1
            for n in shape:
                numel *= n
            size = numel * dtype.itemsize
            header[name] = {
                "dtype": _DTYPE_NAMES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            self._sizes.append((name, dtype, size))
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._handle = open(path, "wb")  # noqa: SIM115 (closed in close())
        self._handle.write(len(raw).to_bytes(8, "little"))
        self._handle.write(raw)
        self._current = 0  # index into entries
        self._written = 0  # bytes of the current tensor so far

    def write(self, chunk: Tensor) -> None:
        """Append the next ``chunk`` (any shape) of the current tensor; it must have the declared dtype."""
        name, dtype, size = self._sizes[self._current]
        if chunk.dtype != dtype:
            raise TypeError(f"{name}: got a {chunk.dtype} chunk for a {dtype} tensor")
        data = chunk.detach().reshape(-1).contiguous().view(torch.uint8).numpy()
        if self._written + data.nbytes > size:
            raise ValueError(f"{name}: more data than its shape holds")
        self._handle.write(memoryview(data))
        self._written += data.nbytes
        while self._current < len(self._sizes) and self._written == self._sizes[self._current][2]:
            self._current, self._written = self._current + 1, 0

    def close(self) -> None:
        self._handle.close()
        if self._current != len(self._sizes):
            name = self._sizes[self._current][0]
            raise ValueError(f"safetensors output closed before tensor {name} was complete")
