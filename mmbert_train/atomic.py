"""Publishing outputs atomically: write under a temporary name next to the target, rename it into place at the end.

* Directories: :func:`atomic_output_dir` (tokenizer, sample corpus, exported or merged model). The temporary
  sibling is ``.NAME.tmp-PID``; an overwritten output is moved to ``.NAME.old-PID`` for the instant of the swap.
* Files: :func:`atomic_write_text`, :func:`atomic_write_bytes`, :func:`atomic_write_json` (manifests, indexes,
  markers, tables), all through :func:`atomic_output_file`, which a writer that needs a file name (``savefig``,
  a downloader, ``csv.writer``) uses directly. The temporary file ``.NAME.tmp-PID-RANDOM`` is flushed and fsynced before ``os.replace``,
  so the target holds the old content or the whole new one, even after a crash or power loss.

A crashed or killed run leaves either the old output or the complete new one, never a half-written one. What it
leaves next to it (its temporary names) is removed by the next run that writes the same output: a leftover
whose PID no longer runs on this machine is deleted; a ``.NAME.old-PID`` of a dead run while ``NAME`` itself is
missing (killed in the middle of the swap) is the previous output and is renamed back first.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmbert_train.processes import pid_alive


def _leftovers(out: Path, kind: str) -> Iterator[tuple[Path, int]]:
    """``(path, pid)`` of the ``.NAME.<kind>-PID[-RANDOM]`` siblings of ``out`` whose PID is dead."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.{kind}-(\d+)(?:-[0-9a-f]+)?$")
    try:
        siblings = list(out.parent.iterdir())
    except FileNotFoundError:
        return
    for path in siblings:
        match = pattern.match(path.name)
        if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
            yield path, int(match.group(1))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_leftovers(out: str | os.PathLike) -> list[Path]:
    """Remove what killed runs left next to ``out`` (see the module docstring); returns the paths removed.

    Called by every writer here; call it yourself to tidy a folder without writing.
    """
    out = Path(out)
    removed = []
    for old, _ in _leftovers(out, "old"):
        if not out.exists() and not out.is_symlink():
            old.rename(out)  # killed between "move the old output aside" and "move the new one in"
        else:
            _remove(old)
            removed.append(old)
    for tmp, _ in _leftovers(out, "tmp"):
        _remove(tmp)
        removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_output_dir(out: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``out``; move it to ``out`` when the block ends without error."""
    out = Path(out)
    clean_leftovers(out)
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
    """Yield a temporary file name in ``path``'s folder; when the block ends without error the file is fsynced and
    renamed to ``path`` (``os.replace``), else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, fsync, ``os.replace``."""
    with atomic_output_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding``."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(
    path: str | os.PathLike,
    obj: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = True,
    ensure_ascii: bool = True,
) -> Path:
    """:func:`atomic_write_text` of ``obj`` as JSON (by default indented, keys sorted) with a final newline."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii)
    return atomic_write_text(path, text + "\n")
