"""The shipped phase recipes plan cleanly against a synthetic manifest built from the published counts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mmbert_train.cli import main as mmbert
from mmbert_train.data.languages import read_counts_csv

REPO = Path(__file__).resolve().parents[1]
COUNTS_CSV = REPO / "recipes" / "languages" / "language_counts.csv"
# recipe -> (column of language_counts.csv with its languages, number of ids in its set)
PHASES = {
    "base_pretrain.yaml": ("pretrain", 61),
    "base_midtrain.yaml": ("ext", 110),
    "base_decay_eng.yaml": ("decay-eng", 110),
    "base_decay_cont.yaml": ("decay-mid", 110),
    "base_decay.yaml": ("decay-all", 1834),
}


def _synthetic_manifest(root: Path, column: str, sources) -> None:
    counts = read_counts_csv(COUNTS_CSV, column)
    entry = lambda tokens: {  # noqa: E731
        "documents": max(1, tokens // 500), "samples": max(1, tokens // 500), "tokens": tokens,
        "skipped": 0, "heldout_documents": 0,
    }  # fmt: skip
    manifest = {"tokenizer": "t", "max_seq_len": 8192, "sources": {}}
    for source in sources:
        if source.kind == "multilingual":
            folders = {lang: n for lang, n in counts.items() if n and lang not in ("eng", "code")}
        else:  # fixed: the languages it names, or a few (MegaWika-style: all its languages)
            folders = {lang: 10**9 for lang in (source.languages or ["eng", "deu", "rus"])}
        manifest["sources"][source.name] = {lang: entry(n) for lang, n in folders.items()}
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("recipe", sorted(PHASES))
def test_shipped_recipe_plans(recipe, tmp_path, capsys):
    path = REPO / "recipes" / recipe
    if not path.exists():
        pytest.skip(f"{recipe} not shipped")
    from mmbert_train.config import load_recipe

    column, n_ids = PHASES[recipe]
    sources = list(load_recipe(path).data.sources.values())
    _synthetic_manifest(tmp_path / "mds", column, sources)
    out = tmp_path / "plan"
    rc = mmbert(["plan", str(path), f"data.root={tmp_path / 'mds'}", "--no-check-files", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    with open(out.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert sum(float(r["share"]) for r in rows) == pytest.approx(1.0, abs=1e-9)
    languages = [r for r in rows if r["kind"] == "language"]
    assert len(languages) == n_ids - 2  # eng and code come from fixed sources only
    fixed = {r["item"]: float(r["share"]) for r in rows if r["kind"] == "fixed"}
    assert fixed == {s.name: pytest.approx(s.share) for s in sources if s.kind == "fixed"}
    assert out.with_suffix(".png").stat().st_size > 1000
