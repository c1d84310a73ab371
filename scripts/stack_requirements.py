"""Print the requirements of the "current" stack, for `make install STACK=current`.

The current stack runs a newer torch and transformers 5 than Composer 0.32.1 and Streaming 0.13.0 declare
(``torch<2.7.1``, ``torchvision<0.22.1``, ``transformers<5``). Those two are installed with ``--no-deps``; this
script then lists everything else they and this project require, from the installed distributions' metadata and
pyproject.toml, minus the packages whose versions the stack chooses itself (torch, torchvision, transformers) and
minus Composer and Streaming (already installed). Every other pin they declare is kept as declared.

    python scripts/stack_requirements.py [--extra dev] > requirements.txt
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the copy pip vendors
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
# Installed with --no-deps (their upper pins on torch/transformers are what the current stack lifts).
NO_DEPS = ("mosaicml", "mosaicml-streaming")
# Chosen by the stack itself (Makefile CURRENT_PINS), never by a dependency's declaration.
STACK_CHOSEN = ("torch", "torchvision", "transformers")


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them (``PyNaCl`` == ``pynacl``, ``ruamel.yaml`` == ``ruamel-yaml``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def applies_here(req: Requirement) -> bool:
    """Whether ``req`` is required on this platform without extras (``extra == 'nlp'`` and foreign markers are
    not)."""
    return req.marker is None or req.marker.evaluate({"extra": ""})


def project_requirements(extras: list[str] = ()) -> list[str]:
    """This project's requirement strings from pyproject.toml, with those of ``extras``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in extras:
        declared += project["optional-dependencies"][extra]
    return declared


def requirements(extras: list[str]) -> list[str]:
    """The deduplicated requirement strings, in first-seen order, without markers that do not apply here."""
    skip = {*NO_DEPS, *STACK_CHOSEN}
    declared = project_requirements(extras)
    for dist in NO_DEPS:
        try:
            declared += metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            sys.exit(f"stack_requirements: {dist} is not installed; install it with --no-deps first")
    out: list[str] = []
    for line in declared:
        req = Requirement(line)
        if normalise(req.name) in skip or not applies_here(req):
            continue
        req.marker = None
        text = str(req)
        if text not in out:
            out.append(text)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", action="append", default=[], help="project extras to include (e.g. dev)")
    args = parser.parse_args(argv)
    print("\n".join(requirements(args.extra)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
