"""Removing the shared memory Streaming left behind, without touching that of runs still going.

Streaming keeps each dataset's coordination state in POSIX shared memory named ``<6-digit prefix>_<what>``
(``000000_locals``, ``000000_barrier``, ...). A killed run leaves them in ``/dev/shm``, and a later dataset
that reuses the prefix fails. Streaming's own ``clean_stale_shared_memory()`` unlinks EVERY such segment on the
machine, so two trainings that start at the same time (or one starting while another runs) break each other.

:func:`clean_dead_shared_memory` unlinks a Streaming segment only when no process maps it or holds it open
(read from ``/proc/<pid>/maps`` and ``/proc/<pid>/fd``): the segments of a live run are mapped by that run.
Processes of other users are not readable, but Streaming creates its segments readable by their owner only, so
they cannot be using ours. Off Linux (no ``/proc``) it falls back to Streaming's function.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")


def _streaming_names() -> list[str]:
    from streaming.base.constant import SHM_TO_CLEAN

    return [str(name).lstrip("/") for name in SHM_TO_CLEAN]


def streaming_segments(shm_dir: Path = SHM_DIR) -> list[str]:
    """Names of the Streaming segments in ``shm_dir`` (``/dev/shm``) owned by this user."""
    pattern = re.compile(r"^\d{6}_(" + "|".join(map(re.escape, _streaming_names())) + r")$")
    uid = os.getuid()
    out = []
    for entry in shm_dir.iterdir() if shm_dir.is_dir() else []:
        try:
            if pattern.match(entry.name) and entry.stat().st_uid == uid:
                out.append(entry.name)
        except OSError:
            continue
    return sorted(out)


def segments_in_use(shm_dir: Path = SHM_DIR) -> set[str]:
    """Names under ``shm_dir`` that some readable process maps or holds open."""
    prefix = str(shm_dir).rstrip("/") + "/"
    used: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            with open(proc / "maps", encoding="utf-8", errors="replace") as maps:
                for line in maps:
                    at = line.find(prefix)
                    if at >= 0:
                        used.add(line[at + len(prefix) :].split()[0])
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith(prefix):
                    used.add(target[len(prefix) :].split()[0])
        except OSError:  # exited meanwhile, or another user's process
            continue
    return used


def clean_dead_shared_memory(shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlink the Streaming segments that no process uses; returns their names."""
    if not Path("/proc/self/maps").exists():
        from streaming.base.util import clean_stale_shared_memory

        clean_stale_shared_memory()
        return []
    candidates = streaming_segments(shm_dir)
    if not candidates:
        return []
    used = segments_in_use(shm_dir)
    removed = []
    for name in candidates:
        if name in used:
            continue
        try:
            (shm_dir / name).unlink()
            removed.append(name)
        except FileNotFoundError:
            continue
        except OSError as err:
            log.debug("cannot remove %s: %s", shm_dir / name, err)
    if removed:
        log.info(
            "removed %d shared-memory segments of dead Streaming runs: %s", len(removed), ", ".join(removed)
        )
    return removed
