"""Publishing an output directory atomically: build it under a temporary sibling, rename it into place at the end.

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
