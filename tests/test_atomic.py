"""mmbert_train.atomic: files and folders are published whole, and what killed runs left is cleaned up."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mmbert_train.atomic import (
    atomic_output_dir,
    atomic_output_file,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    clean_leftovers,
)


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_file_writers_write_exactly_and_leave_no_temporary(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.txt", "héllo\n")
    atomic_write_json(tmp_path / "c.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_bytes() == "héllo\n".encode()
    assert (tmp_path / "c.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    atomic_write_json(tmp_path / "d.json", {"é": 1}, indent=None, ensure_ascii=False)
    assert (tmp_path / "d.json").read_text(encoding="utf-8") == '{"é": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "c.json", "d.json"]


def test_a_failed_write_keeps_the_old_content(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"v": object()})  # not serialisable: fails before anything is written
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # fails while writing the temporary file
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_file_writer_removes_temporaries_of_dead_processes_only(tmp_path, dead_pid):
    dead = tmp_path / f".m.json.tmp-{dead_pid}-0a1b2c3d"
    live = tmp_path / f".m.json.tmp-{os.getppid()}-0a1b2c3d"  # our parent runs: not a leftover
    other = tmp_path / f".other.json.tmp-{dead_pid}-0a1b2c3d"  # another file's: not ours to judge
    for p in (dead, live, other):
        p.write_text("half")
    atomic_write_json(tmp_path / "m.json", {})
    assert not dead.exists() and live.exists() and other.exists()


def test_output_dir_cleans_leftover_tmp_dirs_of_dead_pids(tmp_path, dead_pid):
    stale = tmp_path / f".out.tmp-{dead_pid}"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "weights.bin").write_bytes(b"x" * 100)
    live = tmp_path / f".out.tmp-{os.getppid()}"
    live.mkdir()
    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "f").write_text("new")
    assert (tmp_path / "out" / "f").read_text() == "new"
    assert not stale.exists() and live.exists()
    # also when the run then refuses to overwrite
    stale.mkdir()
    with pytest.raises(FileExistsError), atomic_output_dir(tmp_path / "out"):
        pass
    assert not stale.exists()


def test_killed_in_the_middle_of_a_swap_restores_the_previous_output(tmp_path, dead_pid):
    # an overwrite killed after "move the old output aside", before "move the new one in"
    old = tmp_path / f".out.old-{dead_pid}"
    old.mkdir()
    (old / "f").write_text("previous")
    (tmp_path / f".out.tmp-{dead_pid}").mkdir()
    assert sorted(p.name for p in clean_leftovers(tmp_path / "out")) == [f".out.tmp-{dead_pid}"]
    assert (tmp_path / "out" / "f").read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    # when `out` exists, a dead run's .old copy is only a leftover
    old.mkdir()
    assert clean_leftovers(tmp_path / "out") == [old]
    assert not old.exists() and (tmp_path / "out" / "f").read_text() == "previous"


def test_output_file_for_writers_that_need_a_name(tmp_path):
    path = tmp_path / "plot.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_output_file(path) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".plot.png.tmp-")
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["plot.png"]
    with atomic_output_file(path) as tmp:  # savefig, a downloader, csv.writer: they take a file name
        tmp.write_bytes(b"new")
        assert path.read_bytes() == b"old"  # not visible before the block ends
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["plot.png"]
