"""The decay-languages experiment: its recipes (recipes/experiments/decay_languages/) and the report that
scripts/decay_languages_experiment.py writes from evaluation results (here synthetic ones)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest

from mmbert_train.config import load_recipe
from mmbert_train.data.languages import read_language_file

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes" / "experiments" / "decay_languages"


@pytest.fixture(scope="module")
def exp():
    spec = importlib.util.spec_from_file_location(
        "decay_languages_experiment", REPO / "scripts" / "decay_languages_experiment.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recipes():
    cwd = os.getcwd()
    os.chdir(REPO)  # recipes name language files relative to the repo root, as `make experiment` runs them
    try:
        return {p: load_recipe(RECIPES / f"{p}.yaml") for p in ("pretrain", "midtrain", "decay_eng",
                                                                   "decay_cont", "decay_all")}  # fmt: skip
    finally:
        os.chdir(cwd)


def test_language_sets_are_nested_and_groups_disjoint(exp):
    groups = exp.language_groups(RECIPES)
    pre, mid_only, dec_only = groups["pretrain"], groups["midtrain_only"], groups["decay_only"]
    files = {name: read_language_file(RECIPES / "languages" / f"{name}.txt") for name in ("pretrain", "midtrain",
                                                                                        "decay_all")}  # fmt: skip
    # the groups partition decay_all.txt: pretrain.txt, then what midtrain.txt adds, then what decay_all.txt adds
    assert pre == files["pretrain"]
    assert set(pre) | set(mid_only) == set(files["midtrain"]) and len(pre) + len(mid_only) == len(
        files["midtrain"]
    )
    assert set(pre) | set(mid_only) | set(dec_only) == set(files["decay_all"])
    assert len(pre) + len(mid_only) + len(dec_only) == len(files["decay_all"])
    assert pre and mid_only and dec_only
    assert not set(pre) & set(mid_only) and not set(mid_only) & set(dec_only) and not set(pre) & set(dec_only)
    published = set(read_language_file(REPO / "recipes" / "languages" / "phase1_pretrain.txt"))
    assert set(pre) <= published and "eng" in pre
    published_mid = set(read_language_file(REPO / "recipes" / "languages" / "phase2_midtrain.txt"))
    assert set(mid_only) <= published_mid and not set(dec_only) & published_mid


def test_recipes_follow_the_phases_and_differ_only_where_the_variants_do(recipes):
    r = recipes
    assert [r[p].data.mask_ratio for p in ("pretrain", "midtrain", "decay_all")] == [0.30, 0.15, 0.05]
    assert [r[p].data.tau for p in ("pretrain", "midtrain", "decay_all")] == [0.7, 0.5, 0.3]
    for p in ("decay_eng", "decay_cont", "decay_all"):
        assert r[p].init_from.path == "runs/decay_languages/seed21/midtrain/latest-rank0.pt"
        assert r[p].trainer.max_duration == r["decay_cont"].trainer.max_duration
        assert r[p].scheduler == r["decay_cont"].scheduler
    assert r["midtrain"].init_from.path == "runs/decay_languages/seed21/pretrain/latest-rank0.pt"
    assert r["decay_all"].data.languages.endswith("decay_all.txt")
    assert r["decay_cont"].data.languages == r["decay_eng"].data.languages == r["midtrain"].data.languages
    assert [(s.name, s.kind) for s in r["decay_cont"].data.sources.values()] == [("udhr", "multilingual")]
    eng = [s for s in r["decay_eng"].data.sources.values() if s.kind == "fixed"]
    assert [(s.name, s.share, s.languages) for s in eng] == [("udhr_eng", 0.18, ["eng"])]
    shapes = {(x.model_config.hidden_size, x.model_config.vocab_size) for x in r.values()}
    assert shapes == {(128, 8192)}


def test_phase_overrides_chain_the_seed_folders_and_scale_the_budget(exp, recipes, monkeypatch):
    monkeypatch.chdir(REPO)
    run, data = Path("/tmp/x"), Path("/tmp/x/data")
    over = dict(o.split("=", 1) for o in exp.phase_overrides(run, 7, "decay_all", data, 0.5))
    assert over["init_from.path"] == "/tmp/x/seed7/midtrain/latest-rank0.pt"
    assert over["trainer.save_folder"] == "/tmp/x/seed7/decay_all"
    assert over["trainer.seed"] == over["data.shuffle_seed"] == "7"
    full = int(recipes["decay_all"].trainer.max_duration.removesuffix("ba"))
    assert over["trainer.max_duration"] == f"{round(full * 0.5)}ba"
    pre = dict(o.split("=", 1) for o in exp.phase_overrides(run, 7, "pretrain", data, 0.01))
    assert "init_from.path" not in pre and pre["trainer.max_duration"] == "8ba"
    assert pre["scheduler.t_warmup"] == "7ba"  # the warmup never outlasts a scaled-down phase


def _fake_eval(
    path: Path, groups: dict[str, list[str]], accuracy: dict[str, float], per_lang: dict[str, float]
):
    report = {
        "mask_ratio": 0.15,
        "seed": 1234,
        "languages": {
            x: {"accuracy": per_lang.get(x, 0.1), "loss": 5.0 - 10 * (per_lang.get(x, 0.1) - 0.1)}
            for g in groups.values()
            for x in g
        },
        "groups": {
            g: {"accuracy": accuracy[g], "loss": 6.0 - 10 * accuracy[g], "masked_tokens": 1000}
            for g in groups
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))


def _write_run(exp, run_dir: Path, seed: int, groups, decay_all_gain: float, variants=None):
    base = {"pretrain": 0.20, "midtrain_only": 0.15, "decay_only": 0.05}
    for variant in variants or exp.VARIANTS:
        acc = dict(base)
        per_lang = {}
        if variant == "decay_all":
            acc["decay_only"] += decay_all_gain
            per_lang = {x: 0.1 + decay_all_gain for x in groups["decay_only"]}
        if variant == "merged":
            acc["decay_only"] += decay_all_gain / 2
        _fake_eval(run_dir / f"seed{seed}" / "eval" / f"{variant}.json", groups, acc, per_lang)


GROUPS = {"pretrain": ["eng", "fra"], "midtrain_only": ["por"], "decay_only": ["fao", "gla", "bre"]}
BASE = {
    "pretrain": 0.20,
    "midtrain_only": 0.15,
    "decay_only": 0.05,
}  # _write_run's accuracies before any gain


def markdown_table(text: str, first_header: str) -> dict[str, list[str]]:
    """The Markdown table whose header row starts with ``| first_header |``: row label -> its other cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = {}
    for line in lines[start + 2 :]:  # after the header and the |---| line
        if not line.startswith("|"):
            break
        label, *cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[label] = cells
    return rows


def numbers(cell: str) -> list[float]:
    """The numbers of a cell, in order: ``10.0 (9.0–11.0)`` -> [10.0, 9.0, 11.0]."""
    return [float(x) for x in re.findall(r"[+-]?\d+(?:\.\d+)?", cell)]


def spread(values: list[float]) -> list[float]:
    """mean, min, max: what the report's cells show."""
    return [sum(values) / len(values), min(values), max(values)]


def test_report_tables_spread_and_conclusion_from_the_results(exp, tmp_path):
    _write_run(exp, tmp_path, 1, GROUPS, decay_all_gain=0.04)
    _write_run(exp, tmp_path, 2, GROUPS, decay_all_gain=0.06)
    results = exp.load_results(tmp_path, [1, 2])
    assert results.acc["decay_all"]["decay_only"] == {1: pytest.approx(0.09), 2: pytest.approx(0.11)}
    report, plot = tmp_path / "report.md", tmp_path / "report.png"
    exp.write_plot(results, plot)
    exp.write_report(
        results, report, plot, groups=GROUPS, runs={}, command="cmd", missing=[], machine="test machine"
    )
    text = report.read_text()
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"
    gains = {1: 0.04, 2: 0.06}  # Decay-All's accuracy gain on the decay-only languages per seed; merged: half
    accuracy = markdown_table(text, "checkpoint")  # the first table: accuracy in %
    columns = list(GROUPS)
    for label, row in accuracy.items():
        for group, cell in zip(columns, row, strict=True):
            per_seed = [BASE[group]] * 2
            if group == "decay_only" and label in ("Decay-All", "TIES merge"):
                share = 1.0 if label == "Decay-All" else 0.5
                per_seed = [BASE[group] + share * gains[s] for s in (1, 2)]
            assert numbers(cell) == pytest.approx(spread([100 * a for a in per_seed])), (label, group)
    assert set(accuracy) == {exp.VARIANT_LABELS[v] for v in exp.VARIANTS}
    diffs = markdown_table(text, "comparison")
    decay_only = columns.index("decay_only")
    assert numbers(diffs["Decay-All − Decay-Cont"][decay_only]) == pytest.approx(spread([4.0, 6.0]))
    assert numbers(diffs["Decay-All − Decay-Cont"][0]) == pytest.approx([0.0, 0.0, 0.0])
    # the conclusion: the decay-only languages are learned (every seed agrees), with the per-seed numbers
    assert "learned in the decay phase" in text and "No consistent effect" not in text
    assert re.search(r"Decay-Cont by \+4\.00, \+6\.00 points", text)
    assert re.search(r"lower by 0\.40, 0\.60 nats", text)  # loss = 6 - 10 x accuracy in _fake_eval
    assert re.search(r"merge keeps 50%, 50%", text)  # the merge got half of Decay-All's gain
    assert "(report.png)" in text  # the plot is linked by its file name, next to the report
    assert "Missing from this run" not in text and "test machine" in text


def test_report_says_when_seeds_disagree_and_what_is_missing(exp, tmp_path):
    _write_run(exp, tmp_path, 1, GROUPS, decay_all_gain=0.02)
    _write_run(exp, tmp_path, 2, GROUPS, decay_all_gain=-0.01, variants=["pretrain", "midtrain", "decay_eng",
                                                                        "decay_cont", "decay_all"])  # fmt: skip
    results = exp.load_results(tmp_path, [1, 2])
    report = tmp_path / "r.md"
    exp.write_report(results, report, tmp_path / "r.png", groups=GROUPS, runs={}, command="c",
                     missing=["seed 2: TIES merge (not trained / evaluated)"], machine="m")  # fmt: skip
    text = report.read_text()
    assert "No consistent effect" in text and "learned in the decay phase" not in text
    assert re.search(r"\+2\.00, -1\.00 accuracy points and -0\.20, \+0\.10 nats", text)  # per seed, signed
    merged = markdown_table(text, "checkpoint")["TIES merge"]
    assert numbers(merged[0]) == pytest.approx([20.0, 1.0]) and "1 seed" in merged[0]  # seed 1's value only
    missing = text.split("Missing from this run", 1)[1]
    assert "seed 2: TIES merge (not trained / evaluated)" in missing


def test_report_without_any_finished_decay(exp, tmp_path):
    _write_run(exp, tmp_path, 1, GROUPS, 0.0, variants=["pretrain"])
    results = exp.load_results(tmp_path, [1])
    exp.write_report(results, tmp_path / "r.md", tmp_path / "r.png", groups=GROUPS, runs={}, command="c",
                     missing=[], machine="m")  # fmt: skip
    text = (tmp_path / "r.md").read_text()
    assert "no conclusion yet" in text
    assert markdown_table(text, "checkpoint")["Decay-All"] == ["—"] * len(GROUPS)  # no result, no number
