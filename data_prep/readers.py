"""Stream documents out of raw files: ``*.jsonl``, ``*.jsonl.gz``, ``*.jsonl.zst``, ``*.parquet`` and ``*.txt``.

Every reader is a generator of ``(line, text, reason)``: ``text`` is the document, or ``None`` when the record is
skipped, and then ``reason`` says why (``line`` is the 1-based line or row, ``None`` for a ``.txt`` file).
Nothing is loaded whole: JSON lines are read one by one, parquet in row batches, so memory stays flat.

Record-level faults (invalid JSON, invalid UTF-8, a missing or non-string text field, empty or whitespace-only
text) are skipped and reported; a file that cannot be read at all (corrupt or truncated ``.gz`` / ``.zst``, bad
parquet), a JSON lines file where no record has the text field (a wrong ``--text-field``), or a name with an
unknown extension raises :class:`RawInputError` naming the file. :func:`file_warnings` lists what is legal but
suspicious (an empty file).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path

Record = tuple[int | None, str | None, str | None]

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet", ".txt")
COMPRESSED = (".jsonl.gz", ".jsonl.zst")
PARQUET_BATCH_ROWS = 1024
ZSTD_READ_BYTES = 1 << 16  # compressed bytes fed to the decompressor at a time


class RawInputError(RuntimeError):
    """A raw input file that cannot be read at all (unreadable, corrupt, unknown extension, wrong schema)."""


def file_kind(path: Path) -> str:
    """The reader for ``path`` by its extension; :class:`RawInputError` for anything else."""
    name = path.name
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise RawInputError(f"{path}: unknown file type; expected one of {', '.join('*' + s for s in SUFFIXES)}")


def check_text(text: object, field: str) -> str | None:
    """The reason a text value is not a document, or ``None`` when it is one (shared by every reader)."""
    if text is None:
        return f"field {field!r} is null"
    if not isinstance(text, str):
        return f"field {field!r} is {type(text).__name__}, not a string"
    if not text.strip():
        return "empty or whitespace-only text"
    return None


def file_warnings(path: Path) -> list[str]:
    """What is readable but probably not meant: an empty (0-byte) file, which holds no documents at all.

    An empty ``.gz`` / ``.zst`` file is not even a valid archive (an empty archive has a header), so it most
    likely is a download or copy that never happened.
    """
    kind = file_kind(path)
    if kind != ".txt" and path.stat().st_size == 0:  # an empty .txt is counted as a skipped (empty) document
        what = "compressed file" if kind in COMPRESSED else "file"
        return [f"{path}: empty {what} (0 bytes), no documents read from it"]
    return []


def _json_lines(stream: io.BufferedIOBase, field: str, path: Path) -> Iterator[Record]:
    records = with_field = 0
    first_keys: list[str] | None = None
    for number, raw in enumerate(stream, start=1):
        if not raw.strip():
            continue  # blank lines (e.g. a trailing newline) hold no record at all
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, None, f"invalid UTF-8 at byte {exc.start}"
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, None, f"invalid JSON ({exc.msg} at column {exc.colno})"
            continue
        if not isinstance(record, dict):
            yield number, None, f"JSON value is {type(record).__name__}, not an object"
            continue
        records += 1
        if first_keys is None:
            first_keys = list(record)
        if field not in record:
            yield number, None, f"missing text field {field!r}"
            continue
        with_field += 1
        text = record[field]
        reason = check_text(text, field)
        yield number, (None if reason else text), reason
    if records and not with_field:
        raise RawInputError(
            f"{path}: none of its {records} JSON records has the text field {field!r} (the first one has "
            f"{', '.join(map(repr, first_keys)) or 'no fields'}); set --text-field"
        )


class _ZstdFrames(io.RawIOBase):
    """A readable stream of the decompressed content of a ``.zst`` file, frame after frame.

    Unlike ``zstandard``'s ``stream_reader``, it raises ``EOFError`` when the file ends inside a frame (a
    truncated download or copy), as ``gzip`` does, instead of returning the text up to the cut.
    """

    def __init__(self, path: Path):
        import zstandard

        self._zstd = zstandard
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._fed = False  # bytes of the current frame were given to the decompressor
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        """Decompress until some output is buffered; False at the clean end of the file."""
        while not self._buffer:
            if self._frame.eof:  # a frame ended: what follows it starts the next one
                rest = self._frame.unused_data
                self._frame = self._zstd.ZstdDecompressor().decompressobj()
                self._fed = False
                if rest:
                    self._fed = True
                    self._buffer = self._frame.decompress(rest)
                    continue
            chunk = self._file.read(ZSTD_READ_BYTES)
            if not chunk:
                if self._fed and not self._frame.eof:
                    raise EOFError("the file ends in the middle of a zstd frame")
                return False
            self._fed = True
            self._buffer = self._frame.decompress(chunk)
        return True

    def readinto(self, b) -> int:
        if not self._fill():
            return 0
        n = min(len(b), len(self._buffer))
        b[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def _open_jsonl(path: Path, kind: str) -> io.BufferedIOBase:
    if kind == ".jsonl.gz":
        return gzip.open(path, "rb")
    if kind == ".jsonl.zst":
        return io.BufferedReader(_ZstdFrames(path), buffer_size=1 << 16)
    return open(path, "rb")


def _parquet(path: Path, field: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    if field not in names:
        raise RawInputError(f"{path}: no column {field!r} (columns: {', '.join(names)}); set --text-field")
    row = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[field]):
        for text in batch.column(0).to_pylist():
            row += 1
            reason = check_text(text, field)
            yield row, (None if reason else text), reason


def _txt(path: Path) -> Iterator[Record]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield None, None, f"invalid UTF-8 at byte {exc.start}"
        return
    reason = check_text(text, "text")
    yield None, (None if reason else text), reason


def read_documents(path: Path, text_field: str = "text") -> Iterator[Record]:
    """Yield ``(line, text, reason)`` for every record of ``path`` (see the module docstring)."""
    kind = file_kind(path)
    try:
        if kind == ".parquet":
            yield from _parquet(path, text_field)
        elif kind == ".txt":
            yield from _txt(path)
        else:
            with _open_jsonl(path, kind) as stream:
                yield from _json_lines(stream, text_field, path)
    except RawInputError:
        raise
    except EOFError as exc:  # gzip and _ZstdFrames: the archive ends before its end marker
        raise RawInputError(
            f"{path}: this {kind} file is truncated ({exc}); replace it with a complete copy"
        ) from exc
    except Exception as exc:  # corrupt archive, permission denied, truncated parquet, ...
        raise RawInputError(f"{path}: cannot read this {kind} file ({type(exc).__name__}: {exc})") from exc
