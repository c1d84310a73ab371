"""Reading token ids out of MDS datasets, whatever wrote them.

Our own shards (``mmbert prep tokenize``: ``input_ids`` as ``ndarray:uint32``, zstd) and pre-tokenized data such
as the published mmBERT shards (``input_ids`` as ``ndarray:uint32`` next to a ``str`` ``id`` column, stored
uncompressed) are read the same way. The ``input_ids`` column may be an MDS ``ndarray`` of any integer dtype or
raw ``bytes`` of 4-byte ids; other columns are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

COLUMN = "input_ids"
BYTES_ID_WIDTH = 4


class MDSError(ValueError):
    """An MDS dataset that cannot be read as token ids; the message names the file (and shard)."""


def _shard_bytes(folder: Path, shard: dict) -> bytes:
    """The shard's raw bytes: the raw file when it is there (the published shards were decompressed after writing
    while their index still names the zip), else the decompressed zip."""
    raw = folder / shard["raw_data"]["basename"]
    zip_data = shard.get("zip_data")
    if zip_data and not raw.is_file():
        from streaming.base.compression import decompress

        path = folder / zip_data["basename"]
        return decompress(shard["compression"], path.read_bytes())
    try:
        return raw.read_bytes()
    except FileNotFoundError:
        raise MDSError(f"{folder / 'index.json'}: shard {raw.name} is missing") from None


def _as_ids(value, encoding: str, where: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.integer):
            raise MDSError(f"{where}: column {COLUMN!r} holds {value.dtype} arrays, expected integer ids")
        return value.reshape(-1)
    if isinstance(value, bytes | bytearray | memoryview):
        if len(value) % BYTES_ID_WIDTH:
            raise MDSError(
                f"{where}: a bytes sample of {len(value)} bytes is not a whole number of 4-byte ids"
            )
        return np.frombuffer(value, dtype="<u4")
    raise MDSError(f"{where}: column {COLUMN!r} has encoding {encoding!r}; expected ndarray of ints or bytes")


def iter_input_ids(folder: str | Path) -> Iterator[np.ndarray]:
    """Yield every sample's ``input_ids`` of the MDS dataset in ``folder`` (shard order), as 1-D integer arrays."""
    folder = Path(folder)
    index_file = folder / "index.json"
    try:
        index = json.loads(index_file.read_text())
    except FileNotFoundError:
        raise MDSError(f"{index_file}: missing; not an MDS dataset") from None
    except ValueError as exc:
        raise MDSError(f"{index_file}: not valid JSON ({exc})") from None
    for number, shard in enumerate(index.get("shards", [])):
        yield from iter_shard_input_ids(folder, shard, f"{index_file} shard {number}")


def iter_shard_input_ids(folder: str | Path, shard: dict, where: str = "shard") -> Iterator[np.ndarray]:
    """Yield the ``input_ids`` of every sample of one shard (an ``index.json`` entry of ``folder``)."""
    from streaming.base.format.mds.reader import MDSReader

    folder = Path(folder)
    if shard.get("format") != "mds":
        raise MDSError(f"{where}: format {shard.get('format')!r}, only 'mds' is supported")
    if COLUMN not in shard["column_names"]:
        raise MDSError(f"{where}: no column {COLUMN!r} (columns: {', '.join(shard['column_names'])})")
    encoding = shard["column_encodings"][shard["column_names"].index(COLUMN)]
    reader = MDSReader.from_json(str(folder), None, shard)
    data = _shard_bytes(folder, shard)
    n = int(np.frombuffer(data, np.uint32, 1)[0])
    offsets = np.frombuffer(data, np.uint32, n + 1, offset=4)
    if n != shard["samples"]:
        raise MDSError(f"{where}: holds {n} samples, index.json says {shard['samples']}")
    for i in range(n):
        sample = reader.decode_sample(data[offsets[i] : offsets[i + 1]])
        yield _as_ids(sample[COLUMN], encoding, where)
