"""Wheels for the lent GPU machines: what their image lacks, for its Python, small enough to travel.

The GPU machines run their own image (Python 3.12, torch 2.11, transformers 5, no network). Composer, Streaming
and a few of their and our dependencies are not in it, and what travels with the working tree is capped at
64 MiB. So the carried wheels are exactly the distributions that the GPU check imports and the image lacks,
pinned in ``scripts/gpu_wheels.txt``, downloaded for CPython 3.12 manylinux x86_64 with ``--no-deps``.

    python scripts/gpu_wheels.py download [--dest .whl]     # `make gpu-wheels`: fetch them (needs PyPI)
    python scripts/gpu_wheels.py record OUT.json -- CMD ... # distributions CMD's Python processes import
    python scripts/gpu_wheels.py check OUT.json             # each one we need is in the image or the list

``record`` puts a ``sitecustomize`` on ``PYTHONPATH`` that writes, at the exit of every Python process CMD
starts, the top-level modules it imported; they are mapped to distributions with
``importlib.metadata.packages_distributions`` of the recording interpreter. ``check`` fails on any that this
project's requirements pull in (`needed`) and neither the image nor the list provides: that keeps the wheel list
true when a dependency is added (tests/test_gpu_check.py runs the dry run under ``record``). Run ``record``
and ``check`` with the Python of the environment they describe: both read its installed metadata.
``scripts/gpu_device.sh`` installs the wheels there and runs the check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from stack_requirements import applies_here, normalise, project_requirements  # noqa: E402

from mmbert_train.processes import pythonpath_with  # noqa: E402

WHEEL_LIST = ROOT / "scripts" / "gpu_wheels.txt"
DEFAULT_DEST = ROOT / ".whl"  # ignored by git; carried to the GPU machine beside the working tree
MAX_BYTES = 48 * 2**20  # of the 64 MiB that travel; the working tree itself takes ~2 MiB
PYTHON_VERSION = "3.12"
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]

# The GPU image's Python distributions (its package list as read on a machine running it, 2026-11-17), normalised
# names. torch 2.11.0, torchvision 0.26.0, transformers 5.17.0, numpy 2.5.2, tokenizers 0.23.2, safetensors
# 0.8.0, huggingface_hub 1.33.0, triton 3.6.0.
IMAGE_PACKAGES = frozenset(
    """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
    charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
    cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
    flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
    huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
    jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
    linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
    mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
    numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
    nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
    nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
    onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
    orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
    propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
    pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning
    pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
    sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
    tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers
    toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
    triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash
    yarl zipp
    """.split()
)
# Imported from the working tree, not installed.
LOCAL_PACKAGES = frozenset({"mmbert-train"})


def read_wheel_list(path: Path = WHEEL_LIST) -> dict[str, str]:
    """``{normalised name: version}`` from ``name==version`` lines (``#`` comments allowed)."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version.strip():
            raise ValueError(f"{path}:{number}: expected 'name==version', got {raw!r}")
        key = normalise(name.strip())
        if key in pins:
            raise ValueError(f"{path}:{number}: {name.strip()} is listed twice (pip stops on two versions)")
        pins[key] = version.strip()
    return pins


# ------------------------------------------------------------------------------------------------ download


def _pip(python: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True, check=False)


def build_python() -> str | None:
    """A CPython 3.12 here, to build the wheel of a package that publishes only an sdist for the image's Python:
    ``$GPU_WHEELS_PYTHON``, else a ``python3.12`` on PATH or under pyenv that runs (a pyenv shim may not)."""
    import glob
    import shutil

    candidates = [os.environ.get("GPU_WHEELS_PYTHON"), shutil.which(f"python{PYTHON_VERSION}")]
    candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{PYTHON_VERSION}.*/bin/python3")))
    for python in filter(None, candidates):
        probe = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if probe.returncode == 0 and probe.stdout.strip() == PYTHON_VERSION:
            return python
    return None


def download(dest: Path, pins: dict[str, str], max_bytes: int = MAX_BYTES) -> list[Path]:
    """Fetch every pinned wheel for CPython 3.12 manylinux x86_64 into ``dest`` (`PLATFORMS`); a package with no
    such wheel is built from its sdist by a CPython 3.12 here (`build_python`). Everything lands in a staging
    folder first: on any failure, or wheels over ``max_bytes``, it raises and ``dest`` is left as it was."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".gpu-wheels-", dir=dest.parent))
    platform_args = [arg for p in PLATFORMS for arg in ("--platform", p)]
    for name, version in sorted(pins.items()):
        spec = f"{name}=={version}"
        got = _pip(
            sys.executable, "download", "-q", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
            "--python-version", PYTHON_VERSION, *platform_args, "-d", str(staging), spec,
        )  # fmt: skip
        if got.returncode == 0:
            continue
        builder = build_python()
        if builder is None:
            raise RuntimeError(
                f"gpu-wheels: {spec} has no CPython {PYTHON_VERSION} manylinux wheel, and no python{PYTHON_VERSION} "
                f"is here to build one (set GPU_WHEELS_PYTHON):\n{got.stderr[-1500:]}"
            )
        built = _pip(builder, "wheel", "-q", "--no-deps", "--no-binary", name, "-w", str(staging), spec)
        if built.returncode != 0:
            raise RuntimeError(f"gpu-wheels: cannot fetch or build {spec}:\n{built.stderr[-3000:]}")
    wheels = sorted(staging.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    problems = []
    wrong = [w.name for w in wheels if not fits_image(w.name)]
    if wrong:
        problems.append(f"not installable on CPython {PYTHON_VERSION} x86_64 Linux: {', '.join(wrong)}")
    if len(wheels) != len(pins):
        problems.append(f"{len(wheels)} wheels for {len(pins)} pins")
    if total > max_bytes:
        largest = sorted(wheels, key=lambda w: -w.stat().st_size)[:5]
        problems.append(
            f"{total / 2**20:.1f} MiB > {max_bytes / 2**20:.0f} MiB; largest: "
            + ", ".join(f"{w.name} ({w.stat().st_size / 2**20:.1f} MiB)" for w in largest)
        )
    if problems:
        raise RuntimeError("gpu-wheels: " + "; ".join(problems) + f" (the wheels are left in {staging})")
    if dest.exists():
        others = [f.name for f in dest.iterdir() if f.suffix != ".whl"]
        if others:
            raise RuntimeError(
                f"gpu-wheels: {dest} holds more than wheels ({', '.join(others[:3])}); not replaced"
            )
        for old in dest.iterdir():
            old.unlink()
        dest.rmdir()
    staging.rename(dest)
    return sorted(dest.glob("*.whl"))


def fits_image(filename: str) -> bool:
    """Whether a wheel's tags (``name-version-python-abi-platform.whl``) install on CPython 3.12, x86_64 Linux."""
    python, abi, plat = filename[: -len(".whl")].split("-")[-3:]
    tag = "cp" + PYTHON_VERSION.replace(".", "")
    minor = int(PYTHON_VERSION.split(".")[1])

    def stable_abi(p: str) -> bool:  # cp37-abi3: any CPython from 3.7 on
        return abi == "abi3" and re.fullmatch(r"cp3\d+", p) is not None and int(p[3:]) <= minor

    py_ok = any(p in ("py3", tag) or stable_abi(p) for p in python.split("."))
    abi_ok = abi in ("none", "abi3", tag)
    plat_ok = plat == "any" or all(
        "x86_64" in p and ("manylinux" in p or p == "linux_x86_64") for p in plat.split(".")
    )
    return py_ok and abi_ok and plat_ok


# ------------------------------------------------------------------------------------------------ record


_SITECUSTOMIZE = """\
import atexit, os, sys

def _mmbert_record_imports():
    names = sorted({m.split(".")[0] for m in list(sys.modules) if not m.startswith("_")})
    with open(os.path.join(os.environ["MMBERT_IMPORT_LOG_DIR"], f"{os.getpid()}.txt"), "w") as fh:
        fh.write("\\n".join(names))

if os.environ.get("MMBERT_IMPORT_LOG_DIR"):
    atexit.register(_mmbert_record_imports)
"""


def record(command: list[str], cwd: Path = ROOT, stdout=None) -> tuple[int, list[str]]:
    """Run ``command`` (output to ``stdout``, stderr with it; default: inherited); return its exit status and the
    sorted distributions its Python processes imported, as this interpreter's environment maps modules."""
    with tempfile.TemporaryDirectory(prefix="import-record-") as tmp:
        hook, logs = Path(tmp, "hook"), Path(tmp, "logs")
        hook.mkdir()
        logs.mkdir()
        (hook / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        env = dict(os.environ, PYTHONPATH=pythonpath_with(hook), MMBERT_IMPORT_LOG_DIR=str(logs))
        stderr = subprocess.STDOUT if stdout is not None else None
        status = subprocess.run(
            command, env=env, cwd=cwd, stdout=stdout, stderr=stderr, check=False
        ).returncode
        modules = {line for log in logs.glob("*.txt") for line in log.read_text().split()}
    return status, distributions(modules)


def distributions(modules: set[str]) -> list[str]:
    """Normalised names of the installed distributions that provide ``modules`` (the standard library and the
    working tree's own packages provide none)."""
    owners = metadata.packages_distributions()
    found = {normalise(dist) for module in modules for dist in owners.get(module, [])}
    return sorted(found - {normalise(n) for n in LOCAL_PACKAGES})


def _requires(dist: metadata.Distribution) -> list[str]:
    """Normalised names of what ``dist`` requires here (extras and foreign markers left out)."""
    from packaging.requirements import Requirement

    return [normalise(req.name) for req in map(Requirement, dist.requires or []) if applies_here(req)]


def needed(imported: list[str]) -> list[str]:
    """The imported distributions that the check needs and the image does not bring: reachable from this
    project's requirements through requirement edges between imported, non-image distributions.

    What an image package requires comes with the image's own version of it (huggingface-hub 2 here pulls
    httpx2, the image's 1.x does not), and what was imported only because it happened to be installed (an
    optional ``try: import``, e.g. transformers 4 probing for opentelemetry) is not required by anything on the
    path, so neither is ours to carry."""
    installed = {normalise(d.metadata["Name"]): d for d in metadata.distributions()}
    candidates = set(imported) - IMAGE_PACKAGES - LOCAL_PACKAGES
    found: set[str] = set()
    from packaging.requirements import Requirement

    todo = [normalise(Requirement(line).name) for line in project_requirements()]
    todo = [name for name in todo if name in candidates]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        if name in installed:
            todo += [r for r in _requires(installed[name]) if r in candidates]
    return sorted(found)


def missing(imported: list[str], pins: dict[str, str]) -> list[str]:
    """The `needed` distributions that the wheel list does not carry."""
    return [name for name in needed(imported) if name not in pins]


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("download", help="fetch the pinned wheels (CPython 3.12 manylinux x86_64)")
    p.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    p.add_argument("--max-mib", type=float, default=MAX_BYTES / 2**20)
    p = sub.add_parser("record", help="distributions a command's Python processes import")
    p.add_argument("out", type=Path)
    p.add_argument("command", nargs=argparse.REMAINDER)
    p = sub.add_parser("check", help="every recorded distribution is in the image or the wheel list")
    p.add_argument("recorded", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "download":
        wheels = download(args.dest, read_wheel_list(), int(args.max_mib * 2**20))
        total = sum(w.stat().st_size for w in wheels)
        print(f"gpu-wheels: {len(wheels)} wheels, {total / 2**20:.1f} MiB in {args.dest}")
        return 0
    if args.cmd == "record":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            parser.error("record needs a command after --")
        status, imported = record(command)
        args.out.write_text(json.dumps({"command": command, "status": status, "distributions": imported}))
        print(f"gpu-wheels: {len(imported)} distributions imported; written to {args.out}")
        return status
    imported = json.loads(args.recorded.read_text())["distributions"]
    pins = read_wheel_list()
    need = needed(imported)
    lacking = [name for name in need if name not in pins]
    if lacking:
        print(
            f"gpu-wheels: needed, but neither in the GPU image nor in {WHEEL_LIST.name}: {', '.join(lacking)}",
            file=sys.stderr,
        )
        return 1
    print(f"gpu-wheels: the {len(need)} needed of {len(imported)} imported distributions are provided")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
