"""`mmbert_train.atomic`: a published file or directory is either the old one or the whole new one."""

from __future__ import annotations

import json

import pytest

from mmbert_train.atomic import (
    atomic_output_dir,
    atomic_output_file,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)


def test_files_are_written_whole_and_leave_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.bin"
    assert atomic_write_bytes(path, b"\x00\x01") == path and path.read_bytes() == b"\x00\x01"
    atomic_write_text(path, "héllo\n")
    assert path.read_bytes() == "héllo\n".encode()
    atomic_write_json(tmp_path / "b.json", {"z": 1, "a": [1, 2]})
    assert (tmp_path / "b.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "z": 1\n}\n'
    assert json.loads((tmp_path / "b.json").read_text()) == {"z": 1, "a": [1, 2]}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.bin", "b.json", "sub"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "plot.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_output_file(path) as tmp:
            assert tmp.parent == tmp_path and tmp.name != path.name
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]
    with atomic_output_file(path) as tmp:  # a writer that needs a file name (savefig, a downloader)
        tmp.write_bytes(b"new")
        assert path.read_bytes() == b"old"  # not visible before the block ends
    assert path.read_bytes() == b"new"


def test_a_failed_directory_keeps_the_old_one(tmp_path):
    out = tmp_path / "model"
    with atomic_output_dir(out) as tmp:
        (tmp / "config.json").write_text("{}")
    assert [p.name for p in out.iterdir()] == ["config.json"]
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_output_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError
    assert [p.name for p in out.iterdir()] == ["config.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
