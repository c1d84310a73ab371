"""Leftovers of a killed training: Streaming's shared memory of dead runs is removed, that of live runs kept;
loader workers exit with their parent."""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mmbert_train.data.shm import SHM_DIR, clean_dead_shared_memory, streaming_segments
from mmbert_train.processes import pythonpath_with

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/maps").exists() or not SHM_DIR.is_dir(), reason="Linux only"
)

MAP_AND_WAIT = """
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 4096)
os.close(fd)
print("mapped", flush=True)
time.sleep(600)
"""


def make_segment(name: str) -> Path:
    path = SHM_DIR / name
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.ftruncate(fd, 4096)
    os.close(fd)
    return path


def test_only_segments_no_process_uses_are_removed():
    prefix = f"{900000 + os.getpid() % 99999:06d}"
    dead, live, mine = (make_segment(f"{prefix}_{what}") for what in ("locals", "barrier", "next_epoch"))
    other = make_segment(f"{prefix}_not_streaming")
    holder = subprocess.Popen(
        [sys.executable, "-c", MAP_AND_WAIT, str(live)], stdout=subprocess.PIPE, text=True
    )
    fd = os.open(mine, os.O_RDWR)
    mapped = mmap.mmap(fd, 4096)  # this process uses it
    os.close(fd)
    try:
        assert holder.stdout.readline().strip() == "mapped"
        assert {dead.name, live.name, mine.name} <= set(streaming_segments())
        removed = clean_dead_shared_memory()
        assert dead.name in removed and not dead.exists()
        assert live.exists() and mine.exists() and other.exists()  # a live run's, ours, and not Streaming's
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        mapped.close()
        assert {live.name, mine.name} <= set(clean_dead_shared_memory())  # their users are gone now
        assert not live.exists() and not mine.exists()
    finally:
        holder.kill()
        for path in (dead, live, mine, other):
            path.unlink(missing_ok=True)


WORKER_PARENT = """
import functools, os, sys, time
import torch
from torch.utils.data import DataLoader, IterableDataset
from mmbert_train.data.loader import _worker_dies_with_parent

class Forever(IterableDataset):
    def __iter__(self):
        while True:
            time.sleep(0.05)
            yield torch.zeros(1)

loader = DataLoader(Forever(), batch_size=None, num_workers=2,
                    worker_init_fn=functools.partial(_worker_dies_with_parent, os.getpid()))
for i, _ in enumerate(loader):
    if i == 4:
        print("running", flush=True)
"""


@pytest.mark.slow
def test_loader_workers_exit_when_the_trainer_is_killed():
    import psutil

    env = {**os.environ, "PYTHONPATH": pythonpath_with(Path(__file__).resolve().parents[1])}
    parent = subprocess.Popen(
        [sys.executable, "-c", WORKER_PARENT], stdout=subprocess.PIPE, text=True, env=env
    )
    assert parent.stdout.readline().strip() == "running"
    children = psutil.Process(parent.pid).children(recursive=True)
    assert len(children) >= 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    gone, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, [p.pid for p in alive]
