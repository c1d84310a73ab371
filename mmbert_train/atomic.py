"""Publishing outputs atomically: a directory is built under a temporary sibling and renamed into place at the
end (:func:`atomic_output_dir`); a file is written to a temporary name in its folder, fsynced and renamed
(:func:`atomic_write_bytes` / ``_text`` / ``_json``, or :func:`atomic_output_file` for a writer that needs a
file name: a downloader, ``savefig``).

Every command that writes a directory a later step reads (tokenizer, sample corpus, exported or merged model)
goes through :func:`atomic_output_dir`, so a crashed or interrupted run leaves either the old directory or the
complete new one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output_dir(out: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``out``; move it to ``out`` when the block ends without error."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"output {out} already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():  # overwrite: move the old one aside first, so `out` is never missing a file
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        tmp.rename(out)


@contextlib.contextmanager
def atomic_output_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file name in ``path``'s folder (unique per process); when the block ends without error
    the file is fsynced and renamed to ``path``, else removed: a reader sees the old file or the whole new one,
    never a prefix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_output_file`."""
    with atomic_output_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: object) -> Path:
    """``obj`` as indented, key-sorted JSON with a final newline, written with :func:`atomic_write_bytes`."""
    import json

    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
