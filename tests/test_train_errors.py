"""Bad input is caught before any work, named by file / key / override, through `mmbert config` and `mmbert train`
alike, and printed as one message (no traceback)."""

from __future__ import annotations

import json
import textwrap

import pytest

from mmbert_train.commands import config as config_command
from mmbert_train.commands import train as train_command

MINIMAL = textwrap.dedent(
    """
    name: t
    phase: pretrain
    model: {{preset: tiny, vocab_size: {vocab}}}
    data:
      root: {root}
      languages: [eng, rus]
      tau: 0.7
      sources: {{web: {{}}}}
      max_seq_len: 64
      mask_ratio: 0.3
      num_workers: 0
    trainer:
      max_duration: 2ba
      global_batch_size: 4
      save_folder: {folder}
      progress_bar: false
    eval: {{enabled: false}}
    """
)


@pytest.fixture(scope="module")
def mds(tmp_path_factory):
    from data_prep.testing import make_mds

    return make_mds(tmp_path_factory.mktemp("data"), max_seq_len=64, heldout_fraction=0.3, repeat=2)


@pytest.fixture
def recipe(tmp_path, mds):
    path = tmp_path / "r.yaml"
    path.write_text(MINIMAL.format(vocab=600, root=mds, folder=tmp_path / "ckpt"))
    return path


def run_both(recipe, overrides, capsys):
    """rc and stderr of `mmbert config` and of `mmbert train` on the same input."""
    out = []
    for command in (config_command, train_command):
        rc = command.main([str(recipe), *overrides])
        out.append((rc, capsys.readouterr().err))
    return out


BAD = [
    (["data.tau=[0.5"], "override 'data.tau=[0.5': the value '[0.5' is not valid YAML"),
    (["=3"], "override '=3': the key before '=' is empty"),
    (["data..tau=0.5"], "override 'data..tau=0.5': the key 'data..tau' has an empty part"),
    (["model.num_attention_heads=0"], "model.num_attention_heads must be > 0, got 0"),
    (["model.norm_eps=-1"], "model.norm_eps must be > 0"),
    (["optimizer.eps=-1e-8"], "optimizer.eps must be > 0"),
    (["data.batch_warmup.tokens=-5"], "data.batch_warmup.tokens must be >= 0"),
    (["data.num_workers=-1"], "data.num_workers must be >= 0"),
    (["trainer.seed=-1"], "trainer.seed must be >= 0"),
    (["trainer.log_interval=0ba"], "trainer.log_interval must be a positive time"),
    (["trainer.save_interval=0ba"], "trainer.save_interval must be a positive time"),
    (
        ["trainer.save_num_checkpoints_to_keep=0"],
        "trainer.save_num_checkpoints_to_keep must be -1 (keep all) or >= 1",
    ),
    (["data.eval.mask_ratio=1.5"], "data.eval.mask_ratio must be in (0, 1)"),
    (["data.eval.max_samples_per_language=0"], "data.eval.max_samples_per_language must be >= 1"),
    (["data.eval.batch_size=0"], "data.eval.batch_size must be >= 1"),
    (["data.eval.max_seq_len=1"], "data.eval.max_seq_len must be at least 2"),
    (["data.eval.groups={bad: [eng, not-a-language]}"], "data.eval.groups.bad"),
    (["data.eval.groups={missing: nowhere/langs.txt}"], "data.eval.groups.missing: language file"),
    (["data.eval.languages=[eng, 12]"], "data.eval.languages"),
    (["data.languages=nowhere.txt"], "data.languages: language file 'nowhere.txt' not found"),
    (["model.vocab_size=100"], "model.vocab_size 100 is smaller than the tokenizer"),
]


@pytest.mark.parametrize("overrides, message", BAD)
def test_bad_values_are_named_by_config_and_train_before_any_work(
    recipe, overrides, message, capsys, tmp_path
):
    for rc, err in run_both(recipe, overrides, capsys):
        assert rc == 2
        assert message in err
        assert "Traceback" not in err
    assert not (tmp_path / "ckpt").exists()  # train stopped before building anything


def test_world_size_of_the_launcher_is_checked_in_config(recipe, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    for rc, err in run_both(recipe, [], capsys):
        assert rc == 2 and "trainer.global_batch_size 4 does not split over 3 ranks" in err
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rc, err in run_both(recipe, ["trainer.device_microbatch_size=3"], capsys):
        assert rc == 2 and "2 rows per rank is not a multiple of trainer.device_microbatch_size 3" in err


def test_microbatch_split_is_checked_by_train_in_one_process(recipe, capsys, monkeypatch, tmp_path):
    """Alone, `mmbert config` only views a recipe meant for N ranks; `mmbert train` checks its own split."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert config_command.main([str(recipe), "trainer.device_microbatch_size=3"]) == 0
    capsys.readouterr()
    assert train_command.main([str(recipe), "trainer.device_microbatch_size=3"]) == 2
    err = capsys.readouterr().err
    assert (
        "4 rows per rank is not a multiple of trainer.device_microbatch_size 3" in err
        and "Traceback" not in err
    )
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: a\nname: b\n", "line 2, column 1: key 'name' given twice (first on line 1)"),
        ("name: a\n  phase: smoke\n", "line 2, column 8: mapping values are not allowed here"),
        ("name: [a\n", "not valid YAML: line 2"),
    ],
)
def test_bad_yaml_names_the_file_and_line(tmp_path, text, message, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    for command in (config_command, train_command):
        assert command.main([str(path)]) == 2
        err = capsys.readouterr().err
        assert f"{path}: not valid YAML" in err and message in err and "Traceback" not in err


def test_a_duplicate_key_in_an_extended_file_names_that_file(tmp_path, capsys):
    (tmp_path / "base.yaml").write_text("name: a\ntrainer: {seed: 1}\ntrainer: {seed: 2}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\n")
    assert config_command.main([str(tmp_path / "child.yaml")]) == 2
    assert f"{tmp_path / 'base.yaml'}: not valid YAML: line 3" in capsys.readouterr().err


def test_project_errors_during_a_run_are_one_message(recipe, tmp_path, capsys):
    """A checkpoint that is not one (CheckpointError from the checkpoint reader) ends the command with rc 2."""
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"not a checkpoint at all")
    rc = train_command.main([str(recipe), f"init_from.path={bad}", "init_from.load_optimizer_state=false"])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and "Traceback" not in err and str(bad) in err


def test_every_project_error_type_is_caught():
    from mmbert_train.checkpoints import CheckpointError
    from mmbert_train.data.languages import LanguageSetError
    from mmbert_train.evaluation import EvalError

    caught = train_command.project_errors()
    for error in (CheckpointError, EvalError, LanguageSetError):
        assert issubclass(error, caught)


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_missing_or_cut_shard_is_named_before_training(tmp_path, capsys, damage):
    import shutil

    from data_prep.testing import make_mds

    root = make_mds(tmp_path / "data", max_seq_len=64, heldout_fraction=0.3, repeat=2)
    index = root / "web" / "rus_Cyrl" / "index.json"
    shard = json.loads(index.read_text())["shards"][0]["zip_data"]["basename"]
    path = index.parent / shard
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:10])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(MINIMAL.format(vocab=600, root=root, folder=tmp_path / "ckpt"))
    rc = train_command.main([str(recipe)])
    err = capsys.readouterr().err
    assert rc == 2 and str(path) in err and "Traceback" not in err
    assert ("is missing" if damage == "delete" else "has 10 bytes") in err
    shutil.rmtree(tmp_path / "data")
