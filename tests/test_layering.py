"""The package layering of docs/architecture.md, read from the source: libraries never import the commands or the
prep tool, the data library never imports Composer, and no two modules import each other in a loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("model", "checkpoints", "data", "evaluation", "merge", "train")
LIBRARY_MODULES = ("atomic", "config", "constants", "locks", "processes", "schema")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports inside functions count too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    # a module-level __getattr__ that re-exports a name lazily (mmbert_train.model.load_pretrained) is an alias,
    # not a dependency of the module
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            tree.body.remove(node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def project_modules() -> dict[str, Path]:
    files = [*ROOT.glob("mmbert_train/**/*.py"), *ROOT.glob("data_prep/**/*.py")]
    return {module_name(p): p for p in files}


def is_library(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == "mmbert_train" and len(parts) > 1 and parts[1] in LIBRARIES + LIBRARY_MODULES


@pytest.mark.parametrize("module", sorted(m for m in project_modules() if is_library(m)))
def test_libraries_import_neither_commands_nor_prep(module):
    bad = sorted(
        i for i in imports_of(project_modules()[module])
        if i.startswith(("mmbert_train.commands", "mmbert_train.cli", "data_prep"))
    )  # fmt: skip
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize("module", sorted(m for m in project_modules() if m.startswith("mmbert_train.data")))
def test_data_library_does_not_import_composer(module):
    bad = sorted(i for i in imports_of(project_modules()[module]) if i.split(".")[0] == "composer")
    assert not bad, f"{module} imports {bad}"


# What each library may build on, inside the project: the data library holds no recipe or training code (the
# planner gets a DataConfig, never a whole recipe), evaluation builds on model and data, and so on up.
MAY_IMPORT = {
    "data": ("atomic", "constants", "processes", "data"),  # processes: loader workers die with the trainer
    "model": ("constants", "model", "checkpoints"),
    "evaluation": ("atomic", "constants", "data", "model", "checkpoints", "evaluation"),
}


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_libraries_build_only_on_the_layers_below(package):
    allowed = tuple(f"mmbert_train.{p}" for p in MAY_IMPORT[package])
    for module, path in project_modules().items():
        if not module.startswith(f"mmbert_train.{package}"):
            continue
        bad = sorted(
            i for i in imports_of(path)
            if i.startswith("mmbert_train") and i != "mmbert_train" and not i.startswith(allowed)
        )  # fmt: skip
        assert not bad, f"{module} imports {bad}"


def test_no_import_cycles_between_modules():
    modules = project_modules()
    graph = {m: {i for i in imports_of(p) if i in modules and i != m} for m, p in modules.items()}
    # a package's __init__ re-exporting its submodules is not a cycle with them
    for m in graph:
        graph[m] = {i for i in graph[m] if not m.startswith(i + ".")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n) :] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
