"""scripts/gpu_wheels.py and scripts/gpu_device.sh: what travels to a lent GPU machine, and the one command there.

The dry run under the import recorder (tests/test_gpu_check.py, slow) checks that the wheel list covers what the
check imports; these tests check the list itself, the download's all-or-nothing behaviour, and the device script.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_wheels", ROOT / "scripts" / "gpu_wheels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_wheels = _load()


def test_committed_list_carries_composer_and_streaming_at_our_pins_and_nothing_the_image_has():
    pins = gpu_wheels.read_wheel_list()
    assert pins["mosaicml"] == "0.32.1" and pins["mosaicml-streaming"] == "0.13.0"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"mosaicml==0.32.1"' in pyproject and '"mosaicml-streaming==0.13.0"' in pyproject
    assert "torch-optimi" in pins and "omegaconf" in pins
    assert not set(pins) & gpu_wheels.IMAGE_PACKAGES
    assert {"torch", "transformers", "numpy", "triton"} <= gpu_wheels.IMAGE_PACKAGES


def test_malformed_and_duplicate_lines_name_the_file_and_line(tmp_path):
    bad = tmp_path / "wheels.txt"
    bad.write_text("# comment\nfoo==1.0\nbar>=2\n")
    with pytest.raises(ValueError, match=r"wheels\.txt:3: expected 'name==version', got 'bar>=2'"):
        gpu_wheels.read_wheel_list(bad)
    bad.write_text("Foo_Bar==1.0\nfoo-bar==1.1  # again\n")
    with pytest.raises(ValueError, match=r"wheels\.txt:2: foo-bar is listed twice"):
        gpu_wheels.read_wheel_list(bad)
    bad.write_text("ruamel.yaml==0.19.1  # a comment\n\n")
    assert gpu_wheels.read_wheel_list(bad) == {"ruamel-yaml": "0.19.1"}


@pytest.mark.parametrize(
    ("filename", "fits"),
    [
        ("coolname-2.2.0-py2.py3-none-any.whl", True),
        ("zstandard-0.25.0-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", True),
        ("cryptography-50.0.2-cp311-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", True),
        ("zstd-1.5.7.2-cp312-cp312-linux_x86_64.whl", True),  # built here from the sdist by CPython 3.12
        ("zstandard-0.25.0-cp311-cp311-manylinux2014_x86_64.whl", False),  # another Python
        ("cryptography-50.0.2-cp313-abi3-manylinux_2_34_x86_64.whl", False),  # stable ABI from 3.13 on
        ("zstandard-0.25.0-cp312-cp312-manylinux2014_aarch64.whl", False),
        ("zstandard-0.25.0-cp312-cp312-macosx_11_0_x86_64.whl", False),
        ("old-1.0-py2-none-any.whl", False),
    ],
)
def test_wheel_tags_that_install_on_the_image(filename, fits):
    assert gpu_wheels.fits_image(filename) is fits


def _fake_pip(sizes: dict[str, int], fail: set[str] = frozenset()):
    """Stand-in for ``pip download`` / ``pip wheel``: writes a wheel of the given size for each spec."""

    def pip(python, command, *args):
        spec, dest = args[-1], Path(args[args.index("-d" if command == "download" else "-w") + 1])
        name = spec.split("==")[0]
        if name in fail:
            return subprocess.CompletedProcess(args, 1, "", f"no matching distribution for {spec}")
        (dest / f"{name}-{spec.split('==')[1]}-py3-none-any.whl").write_bytes(b"x" * sizes[name])
        return subprocess.CompletedProcess(args, 0, "", "")

    return pip


def test_download_replaces_the_folder_only_when_every_wheel_came(tmp_path, monkeypatch):
    dest = tmp_path / ".whl"
    dest.mkdir()
    (dest / "stale-0.1-py3-none-any.whl").write_bytes(b"old")
    pins = {"alpha": "1.0", "beta": "2.0"}
    monkeypatch.setattr(gpu_wheels, "_pip", _fake_pip({"alpha": 10, "beta": 20}))
    wheels = gpu_wheels.download(dest, pins, max_bytes=1000)
    assert [w.name for w in wheels] == ["alpha-1.0-py3-none-any.whl", "beta-2.0-py3-none-any.whl"]
    assert sorted(p.name for p in dest.iterdir()) == [w.name for w in wheels]  # the stale wheel is gone
    assert [p.name for p in tmp_path.iterdir()] == [".whl"]  # no staging folder left behind

    # A pin that cannot be fetched (nor built: no CPython 3.12 here) leaves the previous set untouched.
    monkeypatch.setattr(gpu_wheels, "_pip", _fake_pip({"alpha": 10}, fail={"beta"}))
    monkeypatch.setattr(gpu_wheels, "build_python", lambda: None)
    with pytest.raises(RuntimeError, match=r"beta==2\.0 has no CPython 3\.12 manylinux wheel"):
        gpu_wheels.download(dest, pins, max_bytes=1000)
    assert sorted(p.name for p in dest.iterdir()) == [w.name for w in wheels]


def test_download_refuses_more_than_travels(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_wheels, "_pip", _fake_pip({"alpha": 600, "beta": 700}))
    with pytest.raises(RuntimeError, match=r"MiB > .*largest: beta-2\.0-py3-none-any\.whl"):
        gpu_wheels.download(tmp_path / ".whl", {"alpha": "1.0", "beta": "2.0"}, max_bytes=1000)
    assert not (tmp_path / ".whl").exists()


def test_missing_is_what_our_requirements_pull_in_and_the_list_lacks():
    """Only distributions reachable from this project's requirements through non-image ones count: Composer
    requires coolname; torch (and what it requires) comes with the image; an optional import of whatever happens
    to be installed (transformers 4 probes for opentelemetry) is nobody's requirement."""
    imported = ["mosaicml", "coolname", "torch", "sympy", "opentelemetry-api"]
    assert gpu_wheels.missing(imported, {"mosaicml": "0.32.1"}) == ["coolname"]
    assert gpu_wheels.missing(imported, {"mosaicml": "0.32.1", "coolname": "2.2.0"}) == []
    assert gpu_wheels.needed(imported) == ["coolname", "mosaicml"]


def test_record_maps_the_modules_of_child_processes_to_distributions():
    code = "import subprocess, sys; import packaging; subprocess.run([sys.executable, '-c', 'import pytest'])"
    status, imported = gpu_wheels.record([sys.executable, "-c", code])
    assert status == 0
    assert {"packaging", "pytest"} <= set(imported)  # the child's import is recorded too


# ---- scripts/gpu_device.sh ----------------------------------------------------------------------------------

FAKE_PYTHON = """#!/usr/bin/env bash
# Stand-in for the GPU image's python3: logs each call; "gpu_check.py" writes a report like the real one.
echo "$*" >> "$FAKE_LOG"
if [ "$1" = scripts/gpu_check.py ]; then
  echo "PYTHONPATH=$PYTHONPATH WANDB_MODE=$WANDB_MODE" >> "$FAKE_LOG"
  out="$3"; mkdir -p "$out"; echo '{"parts": {}}' > "$out/gpu_check.json"; echo '| part |' > "$out/gpu_check.md"
  echo "check ran"; exit "${FAKE_STATUS:-0}"
fi
"""


def _device_tree(tmp_path: Path, with_wheels: bool) -> Path:
    tree = tmp_path / "repo"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "gpu_device.sh", tree / "scripts")
    if with_wheels:
        (tree / ".whl").mkdir()
        (tree / ".whl" / "mosaicml-0.32.1-py3-none-any.whl").write_bytes(b"")
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    return tree


def _run_device(tree: Path, tmp_path: Path, *args: str, status: int = 0):
    env = dict(
        os.environ, PYTHON=str(tmp_path / "python3"), FAKE_LOG=str(tmp_path / "calls.log"),
        OUT=str(tmp_path / "out"), GPU_SITE=str(tmp_path / "site"), FAKE_STATUS=str(status),
    )  # fmt: skip
    return subprocess.run(
        ["bash", str(tree / "scripts" / "gpu_device.sh"), *args], env=env, capture_output=True, text=True
    )


def test_device_script_installs_the_wheels_beside_the_image_and_returns_the_report(tmp_path):
    tree = _device_tree(tmp_path, with_wheels=True)
    proc = _run_device(tree, tmp_path, "--only", "parity")
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    site = tmp_path / "site"
    assert calls[0] == (
        f"-m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target {site} "
        ".whl/mosaicml-0.32.1-py3-none-any.whl"
    )
    check = next(i for i, c in enumerate(calls) if c.startswith("scripts/gpu_check.py"))
    assert calls[check] == "scripts/gpu_check.py --out build/gpu_check --only parity"
    assert (
        calls[check + 1].startswith(f"PYTHONPATH={site}:{tree}") and "WANDB_MODE=disabled" in calls[check + 1]
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "gpu_check.json",
        "gpu_check.log",
        "gpu_check.md",
    ]
    assert "check ran" in (tmp_path / "out" / "gpu_check.log").read_text()


def test_device_script_passes_on_the_checks_failure_and_still_returns_the_report(tmp_path):
    tree = _device_tree(tmp_path, with_wheels=True)
    proc = _run_device(tree, tmp_path, status=1)
    assert proc.returncode == 1
    assert (tmp_path / "out" / "gpu_check.json").exists()


def test_device_script_without_wheels_says_how_to_make_them(tmp_path):
    tree = _device_tree(tmp_path, with_wheels=False)
    proc = _run_device(tree, tmp_path)
    assert proc.returncode == 2
    assert "no wheels in .whl/ (run 'make gpu-wheels'" in proc.stderr
    assert not (tmp_path / "calls.log").exists()
