"""mmbert_train.locks and mmbert_train.processes: one writer per folder, no stale locks, no orphaned workers."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmbert_train import locks
from mmbert_train.locks import FileLock, LockHeldError, exclusive_lock, read_lock_holder
from mmbert_train.processes import pid_alive, pythonpath_with

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=pythonpath_with(ROOT))
HOLD = """
import sys, time
from mmbert_train.locks import exclusive_lock
with exclusive_lock(sys.argv[1], command="holder"):
    print("held", flush=True)
    time.sleep(60)
"""


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_holder(path: Path, pid: int, host: str | None = None) -> None:
    record = {
        "pid": pid,
        "host": host or socket.gethostname(),
        "command": "old run",
        "since": "2026-01-01 00:00:00",
    }
    path.write_text(json.dumps(record))


def test_lock_records_its_holder_and_refuses_a_second_one(tmp_path):
    path = tmp_path / "out" / ".lock"
    with exclusive_lock(path, command="mmbert prep tokenize") as lock:
        assert lock.held
        holder = read_lock_holder(path)
        assert (holder.pid, holder.host, holder.command) == (
            os.getpid(),
            socket.gethostname(),
            "mmbert prep tokenize",
        )
        with pytest.raises(LockHeldError) as info:  # another lock object, same process: refused as well
            FileLock(path).acquire()
        message = str(info.value)
        assert f"PID {os.getpid()} on host {socket.gethostname()} (mmbert prep tokenize" in message
        assert str(path) in message and "is in use" in message
        assert info.value.holder == holder
    assert not path.exists()  # released: the file is gone
    with exclusive_lock(path):  # and can be taken again
        pass


def test_lock_of_another_live_process_is_refused_and_freed_by_kill_9(tmp_path):
    path = tmp_path / ".lock"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], env=ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LockHeldError, match=rf"held by PID {proc.pid} on host .* \(holder, since"):
            FileLock(path).acquire()
    finally:
        proc.kill()
        proc.wait()
    notes = []
    with exclusive_lock(path, log=notes.append):  # the kernel released the dead holder's lock
        assert read_lock_holder(path).pid == os.getpid()
    assert (
        len(notes) == 1 and f"left by PID {proc.pid} on host" in notes[0] and "no longer running" in notes[0]
    )


def test_stale_lock_file_of_a_dead_pid_is_taken_over(tmp_path):
    path = tmp_path / ".lock"
    dead = _dead_pid()
    _write_holder(path, dead)
    notes = []
    with exclusive_lock(path, log=notes.append):
        assert read_lock_holder(path).pid == os.getpid()
    assert notes == [
        f"note: took over the lock {path} left by PID {dead} on host {socket.gethostname()} (old run, since "
        "2026-01-01 00:00:00), which is no longer running"
    ]


def test_without_flock_the_recorded_pid_decides(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locks.fcntl, "flock", no_flock)
    path = tmp_path / ".lock"
    _write_holder(path, os.getppid())  # a live process on this host
    with pytest.raises(LockHeldError, match=f"PID {os.getppid()} on host"):
        FileLock(path).acquire()
    _write_holder(path, 12345, host="some-other-node")  # another machine: cannot check, so held
    with pytest.raises(LockHeldError, match="PID 12345 on host some-other-node"):
        FileLock(path).acquire()
    _write_holder(path, _dead_pid())
    with exclusive_lock(path):
        assert read_lock_holder(path).pid == os.getpid()


def test_pid_alive():
    assert pid_alive(os.getpid()) and pid_alive(os.getppid())
    assert not pid_alive(_dead_pid()) and not pid_alive(0) and not pid_alive(-1)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and pid_alive(zombie.pid):  # exited, not yet reaped: a zombie
        time.sleep(0.05)
    assert not pid_alive(zombie.pid)
    zombie.wait()


FORKER = """
import os, sys, time
from mmbert_train.processes import die_with_parent
parent = os.getpid()
child = os.fork()
if child == 0:
    die_with_parent(parent)
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_child_dies_with_its_parent_on_kill_9():
    proc = subprocess.Popen([sys.executable, "-c", FORKER], env=ENV, stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    time.sleep(0.2)  # let the child arm the death signal
    assert pid_alive(child)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and pid_alive(child):
        time.sleep(0.05)
    assert not pid_alive(child), "the child outlived its parent"


def test_pythonpath_with_prepends_and_keeps_what_was_there(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/carried/site", "/other"]))
    assert pythonpath_with("/repo", Path("/lib")) == os.pathsep.join(
        ["/repo", "/lib", "/carried/site", "/other"]
    )
    monkeypatch.delenv("PYTHONPATH")
    assert pythonpath_with("/repo") == "/repo"
