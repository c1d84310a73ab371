"""Stream documents out of raw files: ``*.jsonl``, ``*.jsonl.gz``, ``*.jsonl.zst``, ``*.parquet`` and ``*.txt``.

Every reader is a generator of ``(line, text, reason)``: ``text`` is the document, or ``None`` when the record is
skipped, and then ``reason`` says why (``line`` is the 1-based line or row, ``None`` for a ``.txt`` file).
Nothing is loaded whole: JSON lines are read one by one, parquet in row batches, so memory stays flat.

Record-level faults (invalid JSON, invalid UTF-8, a missing or non-string text field, empty or whitespace-only
text) are skipped and reported; a file that cannot be read at all, or a name with an unknown extension, raises
:class:`RawInputError` naming the file.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path

Record = tuple[int | None, str | None, str | None]

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet", ".txt")
PARQUET_BATCH_ROWS = 1024


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


def _json_lines(stream: io.BufferedIOBase, field: str) -> Iterator[Record]:
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
        if field not in record:
            yield number, None, f"missing text field {field!r}"
            continue
        text = record[field]
        reason = check_text(text, field)
        yield number, (None if reason else text), reason


def _open_jsonl(path: Path, kind: str) -> io.BufferedIOBase:
    if kind == ".jsonl.gz":
        return gzip.open(path, "rb")
    if kind == ".jsonl.zst":
        import zstandard

        raw = open(path, "rb")  # noqa: SIM115 - closed with the wrapper below
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
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
                yield from _json_lines(stream, text_field)
    except RawInputError:
        raise
    except Exception as exc:  # corrupt archive, permission denied, truncated parquet, ...
        raise RawInputError(f"{path}: cannot read this {kind} file ({type(exc).__name__}: {exc})") from exc
