"""Typed YAML configs: `extends:` inheritance, `key=value` overrides, and dataclass validation.

Every YAML file the project reads (training recipes, merge recipes) goes through two steps:

1. :func:`load_yaml` reads a file with OmegaConf, follows ``extends:`` (a path, or a list of paths, relative to
   the file that names it; later entries and the file itself win), applies command-line ``key=value``
   overrides (dotted keys, OmegaConf's dotlist syntax) and resolves ``${...}`` interpolations into a plain dict.
2. :func:`from_dict` turns that dict into a dataclass, checking every key against the dataclass fields: an
   unknown key names the closest valid keys, a wrong type names the expected type, and a missing required value
   names the key. The error always says where (``file: section.key``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")

EXTENDS_KEY = "extends"


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the file, the key and what was expected."""


# --------------------------------------------------------------------------------------------------- loading


def load_yaml(path: str | os.PathLike, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Load ``path`` with its ``extends:`` chain merged in, apply ``key=value`` overrides, resolve, return a dict."""
    path = Path(path)
    merged = _load_with_parents(path.resolve(), chain=())
    overrides = list(overrides)
    if overrides:
        for item in overrides:
            parse_override(item)  # names the bad override before OmegaConf's generic message
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(overrides))
        except OmegaConfBaseException as err:
            raise ConfigError(f"{path}: cannot apply overrides {overrides}: {err}") from None
    try:
        resolved = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: cannot resolve interpolation: {err}") from None
    if not isinstance(resolved, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(resolved).__name__}")
    return resolved


_KEY_PART_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$|^\d+$")


def parse_override(item: str) -> tuple[str, Any]:
    """Check one ``key=value`` override and return ``(dotted key, YAML value)``.

    The key must be dotted identifiers (``data.eval.mask_ratio``; no empty part as in ``data..tau``); the value
    is read as YAML (``[0.5`` is refused, naming the override)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. trainer.max_duration=10ba)")
    key, value = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r}: the key before '=' is empty (e.g. trainer.max_duration=10ba)")
    parts = key.split(".")
    bad = [part for part in parts if not _KEY_PART_RE.match(part)]
    if bad:
        what = "an empty part (two dots in a row, or a dot at an end)" if "" in bad else f"{bad[0]!r}"
        raise ConfigError(f"override {item!r}: the key {key!r} has {what}; write dotted names like data.tau")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(
            f"override {item!r}: the value {value!r} is not valid YAML ({_yaml_problem(err)})"
        ) from None
    return key, parsed


def _yaml_problem(err: Exception) -> str:
    """A YAML parser error as one line: the problem and where (line, column), without the parser's context."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return str(problem)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} given twice (first on line {seen[key] + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def check_yaml_syntax(path: Path) -> None:
    """Raise `ConfigError` naming ``path`` and the line when the file is not valid YAML or repeats a key."""
    try:
        yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {err}") from None


def _load_with_parents(path: Path, chain: tuple[Path, ...]):
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"`extends` cycle: {cycle}")
    if not path.is_file():
        where = f" (extended by {chain[-1]})" if chain else ""
        raise ConfigError(f"config file not found: {path}{where}")
    check_yaml_syntax(path)
    try:
        node = OmegaConf.load(path)
    except (OmegaConfBaseException, OSError, ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if node is None or not OmegaConf.is_dict(node):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    parents = node.pop(EXTENDS_KEY, None)
    if parents is None:
        return node
    if isinstance(parents, str):
        parents = [parents]
    elif OmegaConf.is_list(parents):
        parents = list(parents)
    else:
        raise ConfigError(f"{path}: `extends` must be a path or a list of paths, got {parents!r}")
    base = OmegaConf.create({})
    for parent in parents:
        parent_path = (path.parent / str(parent)).resolve()
        base = OmegaConf.merge(base, _load_with_parents(parent_path, (*chain, path)))
    return OmegaConf.merge(base, node)


# ------------------------------------------------------------------------------------------------ validation


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, validating keys and types recursively.

    ``where`` prefixes error messages (e.g. ``"recipes/base_decay.yaml: data"``).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{where or cls.__name__}: expected a mapping for {cls.__name__}, got {_show(data)}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    unknown = [key for key in data if key not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"{_join(where, key)}: unknown key{hint} Valid keys here: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], _join(where, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(where, name)}: missing required value ({_type_name(hints[name])})")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:  # __post_init__ checks of the dataclass itself
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{where or cls.__name__}: {err}") from None


def to_dict(obj: Any) -> Any:
    """A dataclass (tree) as plain dicts/lists, ready for YAML."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:  # Optional[X]: X's own error is the precise one
            raise errors[0]
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_show(value)}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: expected one of {', '.join(repr(a) for a in args)}, got {_show(value)}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list ({_type_name(tp)}), got {_show(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        converted = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(converted) if origin is tuple else converted
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping ({_type_name(tp)}), got {_show(value)}")
        key_tp, val_tp = args if args else (Any, Any)
        return {
            _convert(key_tp, k, where): _convert(val_tp, v, _join(where, str(k))) for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {_show(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `8e-4` as a string; accept what float() accepts
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {_show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {_show(value)}")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"{where}: expected {tp.__name__}, got {_show(value)}")
    return value


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where and not where.endswith(":") else f"{where} {key}".strip()


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + (
            " or null" if type(None) in args else ""
        )
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))
