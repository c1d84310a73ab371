"""Typed YAML loading: inheritance, overrides and validation errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from mmbert_train.data.spec import DataConfig
from mmbert_train.schema import ConfigError, from_dict, load_yaml, to_dict


@dataclass
class Inner:
    lr: float
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class Outer:
    name: str
    steps: int
    inner: Inner
    mode: Literal["a", "b"] = "a"
    tags: list[str] = field(default_factory=list)
    extra: dict[str, int] | None = None


def test_extends_chain_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\nsteps: 10\ninner: {lr: 1e-3}\ntags: [x]\n")
    (tmp_path / "mid.yaml").write_text("extends: base.yaml\nsteps: 20\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "child.yaml").write_text("extends: ../mid.yaml\ninner: {betas: [0.8, 0.9]}\n")
    data = load_yaml(sub / "child.yaml", ["inner.lr=5e-4", "mode=b"])
    cfg = from_dict(Outer, data)
    assert cfg == Outer(name="base", steps=20, inner=Inner(lr=5e-4, betas=(0.8, 0.9)), mode="b", tags=["x"])
    assert to_dict(cfg)["inner"] == {"lr": 5e-4, "betas": [0.8, 0.9]}


def test_extends_cycle_and_missing_parent(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_yaml(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"nope.yaml \(extended by .*c.yaml\)"):
        load_yaml(tmp_path / "c.yaml")


def test_bad_override_form(tmp_path):
    (tmp_path / "a.yaml").write_text("name: x\n")
    with pytest.raises(ConfigError, match="key=value"):
        load_yaml(tmp_path / "a.yaml", ["name"])


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"name": "x", "steps": 1, "inner": {"lr": 1.0}, "stpes": 2},
            r"r.yaml: stpes: unknown key; did you mean 'steps'",
        ),
        (
            {"name": "x", "steps": "many", "inner": {"lr": 1.0}},
            r"r.yaml: steps: expected an integer, got str 'many'",
        ),
        ({"name": "x", "steps": 1, "inner": {}}, r"r.yaml: inner.lr: missing required value \(float\)"),
        ({"name": "x", "steps": 1, "inner": {"lr": 1.0}, "mode": "c"}, r"mode: expected one of 'a', 'b'"),
        ({"name": "x", "steps": 1, "inner": {"lr": 1.0, "betas": [1]}}, r"inner.betas: expected 2 values"),
        ({"name": "x", "steps": 1, "inner": {"lr": True}}, r"inner.lr: expected a number, got bool True"),
        ({"name": "x", "steps": 1, "inner": {"lr": 1}, "extra": {"k": "v"}}, r"extra.k: expected an integer"),
    ],
)
def test_validation_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data, "r.yaml:")


def test_data_section_post_init_checks_are_config_errors():
    base = {
        "root": "d",
        "languages": ["eng"],
        "tau": 0.7,
        "sources": {"s": {}},
        "max_seq_len": 16,
        "mask_ratio": 0.3,
    }
    assert from_dict(DataConfig, base).sources["s"].kind == "multilingual"
    with pytest.raises(ConfigError, match=r"data.tau must be in \(0, 1\], got 1.5"):
        from_dict(DataConfig, {**base, "tau": 1.5}, "r.yaml: data")
    with pytest.raises(ConfigError, match="fixed source needs a share"):
        from_dict(DataConfig, {**base, "sources": {"dclm": {"kind": "fixed"}}}, "r.yaml: data")


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "data.tau=[0.5",
            r"override 'data.tau=\[0.5': the value '\[0.5' is not valid YAML \(line 1, column 5",
        ),
        ("=3", r"override '=3': the key before '=' is empty"),
        ("data..tau=0.5", r"the key 'data..tau' has an empty part"),
        ("data.tau.=0.5", r"the key 'data.tau.' has an empty part"),
        ("data.t au=0.5", r"the key 'data.t au' has 't au'"),
    ],
)
def test_bad_overrides_name_the_override(tmp_path, override, message):
    (tmp_path / "a.yaml").write_text("name: x\n")
    with pytest.raises(ConfigError, match=message):
        load_yaml(tmp_path / "a.yaml", [override])


def test_good_overrides_still_parse(tmp_path):
    (tmp_path / "a.yaml").write_text("name: x\ninner: {lr: 1.0}\n")
    data = load_yaml(
        tmp_path / "a.yaml", ["inner.lr=5e-4", "tags=[a, b]", "extra={k: 1}", "name=a=b", "steps=3"]
    )
    assert data == {"name": "a=b", "inner": {"lr": 5e-4}, "tags": ["a", "b"], "extra": {"k": 1}, "steps": 3}


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "name: a\nname: b\n",
            r"bad.yaml: not valid YAML: line 2, column 1: key 'name' given twice \(first on line 1\)",
        ),
        ("inner:\n  lr: 1\n  lr: 2\n", r"line 3, column 3: key 'lr' given twice"),
        (
            "name: a\n  steps: 1\n",
            r"bad.yaml: not valid YAML: line 2, column 8: mapping values are not allowed",
        ),
    ],
)
def test_bad_yaml_names_file_and_line(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_yaml(tmp_path / "bad.yaml")
