"""Recipe loading: schema errors that name the key, cross-field checks, overrides, `mmbert config` output."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from mmbert_train.commands.config import main
from mmbert_train.config import ConfigError, load_recipe, parse_time

MINIMAL = textwrap.dedent(
    """
    name: t
    phase: smoke
    model: {preset: tiny}
    data:
      root: mds
      languages: [eng, fra]
      tau: 0.7
      sources: {udhr: {}}
      max_seq_len: 128
      mask_ratio: 0.3
    trainer:
      max_duration: 10ba
      global_batch_size: 8
      save_folder: ckpt
    """
)


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(MINIMAL)
    return path


def test_minimal_recipe_defaults(recipe_file):
    recipe = load_recipe(recipe_file)
    assert recipe.model_config.hidden_size == 64  # tiny preset
    assert recipe.optimizer.name == "stableadamw" and recipe.optimizer.decouple_lr
    assert recipe.trainer.seed == 21 and recipe.trainer.autoresume
    assert recipe.init_from is None


def test_overrides_and_model_fields(recipe_file):
    recipe = load_recipe(recipe_file, ["model.global_rope_theta=160000", "trainer.max_duration=5ba"])
    assert recipe.model_config.global_rope_theta == 160000.0
    assert recipe.model_config.local_rope_theta == 10000.0  # untouched preset value
    assert recipe.trainer.max_duration == "5ba"


def test_extends_holds_only_the_difference(recipe_file, tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: r.yaml\nname: c\ndata: {max_seq_len: 256, tau: 0.5}\n")
    recipe = load_recipe(child)
    assert (recipe.name, recipe.data.max_seq_len, recipe.data.tau) == ("c", 256, 0.5)
    assert recipe.data.languages == ["eng", "fra"]


def test_sources_merge_by_name(recipe_file, tmp_path):
    """A recipe extending another changes one source by its name, adds one, and removes one with null."""
    parent = tmp_path / "parent.yaml"
    parent.write_text(
        "extends: r.yaml\n"
        "data:\n"
        "  sources:\n"
        "    books: {kind: fixed, share: 0.1, languages: [eng]}\n"
        "    wiki: {kind: fixed, share: 0.2}\n"
    )
    child = tmp_path / "child.yaml"
    child.write_text(
        "extends: parent.yaml\ndata:\n  sources: {books: {share: 0.3}, wiki: null, code: {kind: fixed, share: 0.05}}\n"
    )
    sources = load_recipe(child).data.sources
    assert list(sources) == ["udhr", "books", "code"]  # the parent's order, new ones after
    assert [(s.name, s.kind, s.share, s.languages) for s in sources.values()] == [
        ("udhr", "multilingual", None, None),
        ("books", "fixed", 0.3, ["eng"]),
        ("code", "fixed", 0.05, None),
    ]


def test_sources_errors_name_the_source(recipe_file, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: r.yaml\ndata: {sources: {wiki: {kind: fixed}}}\n")
    with pytest.raises(
        ConfigError, match=r"bad.yaml: data.sources.wiki: a fixed source needs a share in \(0, 1\)"
    ):
        load_recipe(bad)
    bad.write_text(MINIMAL.replace("sources: {udhr: {}}", "sources: [{name: udhr}]"))
    with pytest.raises(
        ConfigError, match=r"bad.yaml: data.sources: a mapping keyed by source name is expected"
    ):
        load_recipe(bad)
    bad.write_text(MINIMAL.replace("sources: {udhr: {}}", "sources: {udhr: {name: web}}"))
    with pytest.raises(ConfigError, match=r"data.sources.udhr: its name is 'web'; the key is the name"):
        load_recipe(bad)
    bad.write_text(MINIMAL.replace("sources: {udhr: {}}", "sources: {udhr: null}"))
    with pytest.raises(ConfigError, match=r"data.sources: no source left"):
        load_recipe(bad)


def test_run_name_defaults_to_name(recipe_file):
    assert load_recipe(recipe_file).trainer.run_name == "t"
    assert load_recipe(recipe_file, ["trainer.run_name=other"]).trainer.run_name == "other"


def test_resolved_recipe_loads_again(recipe_file, tmp_path):
    """`mmbert config` output is a recipe: sources render as the mapping they are read from."""
    from mmbert_train.config import recipe_to_yaml

    recipe = load_recipe(recipe_file)
    text = recipe_to_yaml(recipe)
    assert yaml.safe_load(text)["data"]["sources"] == {
        "udhr": {"kind": "multilingual", "share": None, "languages": None, "path": None, "include": None,
                 "exclude": []}
    }  # fmt: skip
    again = tmp_path / "again.yaml"
    again.write_text(text)
    assert recipe_to_yaml(load_recipe(again)) == text


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["trainer.max_durtion=3ba"],
            r"r.yaml: trainer.max_durtion: unknown key; did you mean 'max_duration'",
        ),
        (["model.hiden_size=8"], r"model.hiden_size: unknown key; did you mean 'hidden_size'"),
        (["optimizer.lr=fast"], r"optimizer.lr: expected a number, got str 'fast'"),
        (["trainer.global_batch_size=many"], r"trainer.global_batch_size: expected an integer"),
        (["trainer.precision=fp64"], r"trainer.precision: expected one of 'auto', 'fp32'"),
        (["data.max_seq_len=1024"], r"data.max_seq_len 1024 is above model.max_position_embeddings 512"),
        (["model.preset=mmbert-bas"], r"unknown preset 'mmbert-bas'; did you mean 'mmbert-base'"),
        (["trainer.max_duration=10 batches"], r"trainer.max_duration: '10 batches' is not a Composer time"),
        (["scheduler.t_warmup=8ba", "scheduler.t_decay=0.5dur"], r"t_warmup \+ scheduler.t_decay .* longer"),
        (
            ["scheduler.t_warmup=100tok"],
            r"scheduler.t_warmup '100tok' must use the unit of trainer.max_duration",
        ),
        (
            ["trainer.device_microbatch_size=16"],
            r"device_microbatch_size 16 is larger than .*global_batch_size 8",
        ),
        (["trainer.save_folder=null"], r"trainer.autoresume needs trainer.save_folder"),
        (["data.tau=0"], r"data.tau must be in \(0, 1\]"),
        (["optimizer.max_lr=1e-5"], r"optimizer.max_lr \(1e-05\) must be >= optimizer.lr"),
        (["model.hidden_size=63"], r"hidden_size 63 is not a multiple of num_attention_heads"),
    ],
)
def test_bad_recipes_fail_with_clear_messages(recipe_file, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(recipe_file, overrides)


def test_missing_required_and_missing_model(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(MINIMAL.replace("  max_seq_len: 128\n", ""))
    with pytest.raises(ConfigError, match=r"data.max_seq_len: missing required value \(int\)"):
        load_recipe(path)
    path.write_text(MINIMAL.replace("model: {preset: tiny}", "model: {}"))
    with pytest.raises(ConfigError, match="give model.preset .* or init_from.path"):
        load_recipe(path)


def test_batch_warmup_is_pretrain_only(recipe_file):
    bad = ["phase=decay", "data.batch_warmup.start_batch_size=2", "data.batch_warmup.tokens=100"]
    with pytest.raises(ConfigError, match="batch_warmup is pre-training only"):
        load_recipe(recipe_file, bad)
    with pytest.raises(
        ConfigError, match=r"start_batch_size 0 must be in \[1, trainer.global_batch_size = 8\]"
    ):
        load_recipe(recipe_file, ["data.batch_warmup.tokens=100"])


def test_parse_time():
    assert parse_time("3000000000tok") == (3e9, "tok")
    assert parse_time("0.5dur") == (0.5, "dur")
    with pytest.raises(ValueError, match="only `dur` takes a fraction"):
        parse_time("1.5ba")


def test_mmbert_config_prints_resolved_yaml(recipe_file, capsys):
    assert main([str(recipe_file), "optimizer.lr=1e-3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optimizer"]["lr"] == 1e-3
    assert printed["model"]["preset"] == "tiny" and printed["model"]["hidden_size"] == 64  # fully resolved
    assert printed["scheduler"]["name"] == "warmup_stable_decay"
    # what it prints loads back to the same recipe
    again = recipe_file.parent / "again.yaml"
    again.write_text(yaml.safe_dump(printed))
    assert load_recipe(again).model_config == load_recipe(recipe_file).model_config


def test_mmbert_config_reports_errors(recipe_file, capsys):
    assert main([str(recipe_file), "trainer.bogus=1"]) == 2
    assert "trainer.bogus: unknown key" in capsys.readouterr().err
