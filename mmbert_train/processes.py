"""Process liveness and parent-death handling, shared by locks, leftover clean-up and worker pools.

* :func:`pid_alive` answers "is this process still running on this machine?" (a zombie counts as dead: it
  holds no files and runs no code, it only waits to be reaped).
* :func:`die_with_parent`, called first thing in a worker process, makes the worker exit as soon as the
  process that started it dies, even by ``kill -9``. Without it, pool workers of a killed parent wait forever
  on a queue nobody writes to. On Linux the kernel delivers the signal (``prctl(PR_SET_PDEATHSIG)``);
  elsewhere a daemon thread polls ``os.getppid()``.
* :func:`pythonpath_with` is the ``PYTHONPATH`` for a child Python that must import this checkout: the paths
  prepended to the current value, never replacing it (where packages are installed by ``PYTHONPATH``, as on
  the GPU machines, a replaced one loses them).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
POLL_SECONDS = 1.0


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine now (zombies count as dead)."""
    if pid <= 0:
        return False
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # someone else's process: it exists
        return True


def _set_pdeathsig(sig: int) -> bool:
    """Ask the Linux kernel to send ``sig`` to this process when its parent thread exits; False if unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _poll_parent(parent_pid: int) -> None:
    while True:
        time.sleep(POLL_SECONDS)
        if os.getppid() != parent_pid:
            os._exit(1)


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Exit this (worker) process when ``parent_pid``, the process that started it, dies.

    Call it in the worker (e.g. a pool initializer) with the parent's pid taken *before* the worker started:
    if the parent died in between, ``os.getppid()`` already differs and the worker exits at once. The Linux
    death signal fires when the thread that forked the worker exits, so start workers from the main thread
    (``concurrent.futures`` and ``multiprocessing`` pools do).
    """
    if not _set_pdeathsig(sig):
        threading.Thread(target=_poll_parent, args=(parent_pid,), daemon=True, name="die-with-parent").start()
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)


def pythonpath_with(*paths: str | os.PathLike) -> str:
    """``PYTHONPATH`` with ``paths`` first and the current value after them."""
    parts = [os.fspath(p) for p in paths] + [os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)
