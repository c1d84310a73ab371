"""One writer per output folder: an exclusive lock file that names its holder and is never stale.

Usage::

    with exclusive_lock(out_dir / LOCK_NAME, command="mmbert prep tokenize"):
        ...  # only this process writes under out_dir

How it works. The lock is an ``flock`` on the file, so the kernel releases it the moment the holder exits, by
``kill -9`` too: a lock file that a dead run left behind is simply taken over by the next run (the caller is
told whose it was). The file holds the holder's pid, host, command and start time, so a refused run can say
who holds the lock. Two corner cases:

* the holder has exited but processes it forked still hold the lock (they inherit it): the message says so;
* the file system does not support ``flock``: the lock falls back to the recorded pid - held while that
  process runs on this host (a lock recorded by another host is treated as held: we cannot look there).

The lock file is removed when released. A run that acquired the lock checks that the path still names the
file it locked, so a lock released (and unlinked) at the same moment cannot be held twice.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from mmbert_train.processes import pid_alive

LOCK_NAME = ".lock"
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class LockHeldError(RuntimeError):
    """Another live process holds the lock; the message names its pid, host and command and the lock file."""

    def __init__(self, message: str, holder: LockHolder | None):
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) a lock: written into the lock file as JSON."""

    pid: int
    host: str
    command: str
    since: str  # local time the lock was taken, "YYYY-MM-DD HH:MM:SS"

    def describe(self) -> str:
        return f"PID {self.pid} on host {self.host} ({self.command}, since {self.since})"


def read_lock_holder(path: str | os.PathLike) -> LockHolder | None:
    """The holder recorded in a lock file, or ``None`` when there is none (missing, empty or unreadable)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return LockHolder(int(data["pid"]), str(data["host"]), str(data["command"]), str(data["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _holder_is_alive(holder: LockHolder | None) -> bool:
    if holder is None:
        return False
    if holder.host != socket.gethostname():
        return True  # another machine's process: we cannot check it, so it may well be running
    return holder.pid != os.getpid() and pid_alive(holder.pid)


ORPHAN_GRACE_SECONDS = 15.0  # how long the children of a dead holder get to die before the lock is refused


def _flock_waiting_for_orphans(fd: int, path: Path) -> None:
    """``flock(fd, LOCK_EX | LOCK_NB)``; while it is busy only because the recorded holder (on this host) is dead
    and its children, which inherited the lock, are still dying (they die with their parent, but a busy machine
    takes a moment to deliver and act on that signal), retry for up to :data:`ORPHAN_GRACE_SECONDS`."""
    deadline = time.monotonic() + ORPHAN_GRACE_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = read_lock_holder(path)
            orphaned = (
                holder is not None and holder.host == socket.gethostname() and not pid_alive(holder.pid)
            )
            if not orphaned or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class FileLock:
    """An exclusive, non-blocking lock on ``path`` (see the module docstring); use :func:`exclusive_lock`."""

    def __init__(self, path: str | os.PathLike, command: str | None = None):
        self.path = Path(path)
        self.command = command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]).strip() or "python"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _refuse(self, holder: LockHolder | None) -> LockHeldError:
        if holder is None:
            who = "another process (it has not written its pid yet, or the lock file is not ours)"
        elif holder.host == socket.gethostname() and not pid_alive(holder.pid):
            who = f"processes started by {holder.describe()}: that process has exited, its children have not"
        else:
            who = holder.describe()
        return LockHeldError(
            f"{self.path.parent} is in use: the lock {self.path} is held by {who}. Wait for that run to end "
            "or stop it; a lock whose processes have all exited is taken over automatically.",
            holder,
        )

    def acquire(self) -> LockHolder | None:
        """Take the lock or raise :class:`LockHeldError`; returns the previous holder when it was taken over."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: this lock object already holds the lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _flock_waiting_for_orphans(fd, self.path)
            except BlockingIOError:
                os.close(fd)
                raise self._refuse(read_lock_holder(self.path)) from None
            except OSError as exc:
                if exc.errno not in _NO_FLOCK:
                    os.close(fd)
                    raise
                previous = read_lock_holder(self.path)  # no flock here: fall back to the recorded pid
                if _holder_is_alive(previous):
                    os.close(fd)
                    raise self._refuse(previous) from None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:  # released and unlinked by its holder while we opened it: try again
                os.close(fd)
                continue
            previous = read_lock_holder(self.path)
            self._fd = fd
            break
        me = LockHolder(os.getpid(), socket.gethostname(), self.command, time.strftime("%Y-%m-%d %H:%M:%S"))
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(asdict(me)) + "\n").encode("utf-8"), 0)
        os.fsync(self._fd)
        return previous

    def release(self) -> None:
        """Remove the lock file and let go of the lock (no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                os.unlink(self.path)  # while still locked, so nobody locks the file we are removing
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)


@contextlib.contextmanager
def exclusive_lock(
    path: str | os.PathLike,
    *,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Iterator[FileLock]:
    """Hold the lock ``path`` for the block (:class:`LockHeldError` if another live process holds it).

    ``command`` is recorded for the messages other runs print (default: this process's command line); ``log``
    is told when a lock left by a dead process is taken over.
    """
    lock = FileLock(path, command)
    previous = lock.acquire()
    if previous is not None and log is not None:
        log(f"note: took over the lock {lock.path} left by {previous.describe()}, which is no longer running")
    try:
        yield lock
    finally:
        lock.release()
