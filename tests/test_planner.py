"""`mmbert plan`: the table, CSV and PNG, from counts CSVs (available / sampled) and from recipes + manifests."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from mmbert_train.cli import main as mmbert
from mmbert_train.data.languages import read_counts_csv
from mmbert_train.data.planner import invert_sampled_counts, table_from_counts
from mmbert_train.data.sampling import DataValidationError

COUNTS_CSV = Path(__file__).resolve().parents[1] / "recipes" / "languages" / "language_counts.csv"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path, newline="") as f:
        return {(r["phase"], r["item"]): r for r in csv.DictReader(f)}


def test_counts_available_hand_computed(tmp_path, capsys):
    (tmp_path / "counts.csv").write_text("language,col\naaa,900\nbbb,100\neng,1000\nccc,50\n")
    (tmp_path / "set.txt").write_text("aaa\nbbb\neng\n")
    out = tmp_path / "plan"
    rc = mmbert(
        ["plan", "--counts", str(tmp_path / "counts.csv"), "--column", "col", "--counts-are", "available",
         "--tau", "0.5", "--fixed", "eng=0.5", "--phase-tokens", "2000", "--languages", str(tmp_path / "set.txt"),
         "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    # by hand: the multilingual half split by sqrt(900) : sqrt(100) = 3 : 1
    rows = read_rows(out.with_suffix(".csv"))
    assert set(rows) == {("col", "aaa"), ("col", "bbb"), ("col", "eng")}
    expected = {  # item: (kind, available, share, tokens in phase, epochs)
        "aaa": ("language", 900, 0.375, 750, 750 / 900),
        "bbb": ("language", 100, 0.125, 250, 2.5),
        "eng": ("fixed", 1000, 0.5, 1000, 1.0),
    }
    for item, (kind, available, share, in_phase, epochs) in expected.items():
        row = rows[("col", item)]
        assert row["kind"] == kind and float(row["tau"]) == 0.5
        assert float(row["tokens_available"]) == available
        assert float(row["share"]) == pytest.approx(share, abs=1e-12)
        assert float(row["tokens_in_phase"]) == pytest.approx(in_phase, rel=1e-12)
        assert float(row["epochs"]) == pytest.approx(epochs, rel=1e-12)
    assert out.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC
    printed = capsys.readouterr()
    assert "1 language(s) with data are not in the phase's set, ignored: ccc (50)" in printed.out
    assert "warning" not in printed.err


def test_epoch_warning_names_the_language(tmp_path, capsys):
    (tmp_path / "counts.csv").write_text("language,col\naaa,900\nbbb,100\n")
    rc = mmbert(
        ["plan", "--counts", str(tmp_path / "counts.csv"), "--column", "col", "--counts-are", "available",
         "--tau", "0.5", "--fixed", "none", "--phase-tokens", "2400", "--out", str(tmp_path / "p")]
    )  # fmt: skip
    assert rc == 0
    # bbb gets 2400 / 4 = 600 tokens of its 100: 6 epochs
    captured = capsys.readouterr()
    assert "warning: phase col: 1 item(s) repeat more than 5 epochs: bbb 6" in captured.err
    assert "! over 5 epochs" in captured.out


def test_sampled_counts_are_inverted():
    # sampled at tau 0.5: s ∝ n^0.5, so n ∝ s^2 -> 300^2 : 100^2 = 9 : 1, scaled to the sampled total 400
    available = invert_sampled_counts({"aaa": 300, "bbb": 100, "zzz": 0}, 0.5)
    assert available == pytest.approx({"aaa": 360.0, "bbb": 40.0, "zzz": 0.0}, rel=1e-12)
    assert invert_sampled_counts({"aaa": 300, "bbb": 100}, 0.5, available_total=1000)["bbb"] == pytest.approx(
        100
    )

    counts = {"aaa": 300, "bbb": 100}
    same = table_from_counts(counts, name="x", tau=0.5, counts_are="sampled", sampled_tau=0.5, fixed={})
    rows = {r.item: r for r in same.rows}
    assert rows["aaa"].share == pytest.approx(0.75) and rows["bbb"].share == pytest.approx(0.25)
    assert rows["bbb"].epochs == pytest.approx(100 / 40)
    natural = table_from_counts(counts, name="x", tau=1.0, counts_are="sampled", sampled_tau=0.5, fixed={})
    assert {r.item: r.share for r in natural.rows} == pytest.approx({"aaa": 0.9, "bbb": 0.1})


def test_published_counts_round_trip_at_their_own_tau():
    counts = read_counts_csv(COUNTS_CSV, "pretrain")
    table = table_from_counts(counts, name="pretrain", tau=0.7, counts_are="sampled", sampled_tau=0.7)
    total = sum(counts.values())
    assert len(table.rows) == 61
    for row in table.rows:  # re-sampling at the tau they were drawn at gives the published counts back
        assert row.tokens_in_phase == pytest.approx(counts[row.item], rel=1e-9)
        assert row.share == pytest.approx(counts[row.item] / total, rel=1e-9)
    fixed = {r.item: r for r in table.rows if r.kind == "fixed"}
    assert set(fixed) == {"eng", "code"} and fixed["eng"].epochs is None


def test_sampled_counts_that_do_not_follow_the_formula_are_flagged():
    # spread over 8 orders of magnitude sampled at tau 0.3: inverted, the small one would hold ~1e-27 tokens
    table = table_from_counts(
        {"aaa": 10**9, "bbb": 10}, name="x", tau=0.3, counts_are="sampled", sampled_tau=0.3, fixed={}
    )
    assert any("1 language(s) with less than one available token" in note for note in table.notes)
    ok = table_from_counts(
        {"aaa": 10**9, "bbb": 10**7}, name="x", tau=0.3, counts_are="sampled", sampled_tau=0.7, fixed={}
    )
    assert not any("less than one" in note for note in ok.notes)


def test_several_columns_one_series_each(tmp_path):
    (tmp_path / "c.csv").write_text("language,p1,p2\naaa,900,300\nbbb,100,100\nccc,0,50\n")
    out = tmp_path / "cols"
    rc = mmbert(
        ["plan", "--counts", str(tmp_path / "c.csv"), "--column", "p1", "p2", "--counts-are", "available",
         "--tau", "0.5", "1.0", "--fixed", "none", "--phase-tokens", "1000", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    rows = read_rows(out.with_suffix(".csv"))
    assert float(rows[("p1", "aaa")]["share"]) == pytest.approx(0.75)  # tau 0.5: 30 : 10
    assert float(rows[("p2", "ccc")]["share"]) == pytest.approx(50 / 450)  # tau 1: natural
    assert ("p1", "ccc") not in rows
    bad = ["plan", "--counts", str(tmp_path / "c.csv"), "--column", "p1", "p2", "--counts-are", "available",
           "--tau", "0.5", "0.4", "0.3", "--phase-tokens", "10"]  # fmt: skip
    assert mmbert(bad) == 2


def test_counts_errors_name_the_item(tmp_path):
    counts = {"aaa": 10, "bbb": 0, "eng": 5}
    with pytest.raises(DataValidationError, match=r"no data for language 'bbb' in counts"):
        table_from_counts(counts, name="x", tau=0.5, counts_are="available", languages=["aaa", "bbb"],
                          fixed={}, phase_tokens=10)  # fmt: skip
    with pytest.raises(DataValidationError, match=r"--fixed eng: give its share"):
        table_from_counts(
            counts, name="x", tau=0.5, counts_are="available", phase_tokens=10, fixed={"eng": None}
        )
    with pytest.raises(DataValidationError, match=r"--tau must be in \(0, 1\], got 0"):
        table_from_counts(counts, name="x", tau=0, counts_are="available", phase_tokens=10)
    with pytest.raises(DataValidationError, match=r"needs --sampled-tau"):
        table_from_counts(counts, name="x", tau=0.5, counts_are="sampled")
    with pytest.raises(DataValidationError, match=r"fixed shares add up to 1.2"):
        table_from_counts(counts, name="x", tau=0.5, counts_are="available", phase_tokens=10,
                          fixed={"eng": 0.6, "code": 0.6})  # fmt: skip
    with pytest.raises(DataValidationError, match=r"--fixed eng needs a share in \(0, 1\), got 1.5"):
        table_from_counts(
            counts, name="x", tau=0.5, counts_are="available", phase_tokens=10, fixed={"eng": 1.5}
        )


def test_cli_error_exit_code(tmp_path, capsys):
    (tmp_path / "counts.csv").write_text("language,col\naaa,900\n")
    rc = mmbert(["plan", "--counts", str(tmp_path / "counts.csv"), "--column", "nope", "--counts-are", "sampled",
                 "--sampled-tau", "0.7", "--tau", "0.5"])  # fmt: skip
    assert rc == 2
    assert "no column 'nope'; the columns are: col" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- recipes


def _write_data(root: Path) -> None:
    layout = {"web": {"aaa": (900, 9), "bbb_Latn": (100, 2), "ccc": (40, 1)}, "books": {"eng": (1000, 10)}}
    manifest = {"tokenizer": "t", "max_seq_len": 128, "sources": {}}
    for source, folders in layout.items():
        manifest["sources"][source] = {}
        for folder, (tokens, samples) in folders.items():
            (root / source / folder).mkdir(parents=True)
            (root / source / folder / "index.json").write_text("{}")
            manifest["sources"][source][folder] = {
                "documents": samples, "samples": samples, "tokens": tokens, "skipped": 0, "heldout_documents": 0,
            }  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))


RECIPE = """\
name: {name}
phase: smoke
model: {{preset: tiny}}
data:
  root: {root}
  languages: [aaa, bbb, eng]
  tau: {tau}
  max_seq_len: 64
  mask_ratio: 0.3
  sources:
    web: {{}}
    books: {{kind: fixed, share: 0.5, languages: [eng]}}
trainer:
  max_duration: {duration}
  global_batch_size: 4
  autoresume: false
"""


def test_recipe_plans_one_series_per_phase(tmp_path, capsys):
    _write_data(tmp_path / "mds")
    for name, tau, duration in (("one", 0.5, "2000tok"), ("two", 1.0, "10ba")):
        (tmp_path / f"{name}.yaml").write_text(
            RECIPE.format(name=name, root=tmp_path / "mds", tau=tau, duration=duration)
        )
    out = tmp_path / "both"
    rc = mmbert(["plan", str(tmp_path / "one.yaml"), str(tmp_path / "two.yaml"), "--out", str(out)])
    assert rc == 0
    rows = read_rows(out.with_suffix(".csv"))
    # phase one: 2000 tokens; web's half split by sqrt(900) : sqrt(100); bbb_Latn counts toward bbb
    assert float(rows[("one", "aaa")]["share"]) == pytest.approx(0.375)
    assert float(rows[("one", "bbb")]["tokens_in_phase"]) == pytest.approx(250)
    assert float(rows[("one", "bbb")]["epochs"]) == pytest.approx(2.5)
    assert float(rows[("one", "books")]["tokens_available"]) == 1000
    # phase two: tau 1 (natural), 10 batches x 4 rows x 64 tokens = 2560 tokens at most
    assert float(rows[("two", "aaa")]["share"]) == pytest.approx(0.45)
    assert float(rows[("two", "aaa")]["tokens_in_phase"]) == pytest.approx(0.45 * 2560)
    assert out.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC
    printed = capsys.readouterr().out
    assert "ignored: ccc (40)" in printed
    assert "phase tokens from max_duration x batch x seq len (upper bound)" in printed

    # overrides apply to every recipe; --phase-tokens replaces the recipe's budget
    rc = mmbert(
        ["plan", str(tmp_path / "one.yaml"), "data.tau=1.0", "--phase-tokens", "100", "--out", str(out)]
    )
    assert rc == 0
    rows = read_rows(out.with_suffix(".csv"))
    assert float(rows[("one", "aaa")]["share"]) == pytest.approx(0.45)
    assert float(rows[("one", "aaa")]["tokens_in_phase"]) == pytest.approx(45)


def test_recipe_data_errors_are_reported(tmp_path, capsys):
    _write_data(tmp_path / "mds")
    text = RECIPE.format(name="x", root=tmp_path / "mds", tau=0.5, duration="100tok")
    (tmp_path / "x.yaml").write_text(text.replace("[aaa, bbb, eng]", "[aaa, zul, eng]"))
    assert mmbert(["plan", str(tmp_path / "x.yaml"), "--out", str(tmp_path / "x")]) == 2
    assert "no data for language 'zul'" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
    (tmp_path / "y.yaml").write_text(text.replace("    books: {kind", "    nobooks: {kind"))
    assert mmbert(["plan", str(tmp_path / "y.yaml")]) == 2
    assert "source 'nobooks' does not exist in the manifest" in capsys.readouterr().err


def test_human_numbers():
    from mmbert_train.data.planner import human

    assert [human(x) for x in (2.3e12, 600e9, 4.7e6, 812, None)] == ["2.3T", "600B", "4.7M", "812", "-"]
    assert math.isclose(float(human(1234.0)[:-1]), 1.23)


@pytest.mark.slow
def test_plan_on_a_prepared_corpus(tmp_path, capsys):
    """End to end on what `mmbert prep tokenize` writes: real MDS folders and manifest, script-suffixed folders."""
    from data_prep.testing import make_mds

    mds = make_mds(tmp_path / "corpus")
    manifest = json.loads((mds / "manifest.json").read_text())
    web = manifest["sources"]["web"]
    recipe = RECIPE.format(name="prep", root=mds, tau=0.5, duration="5000tok")
    recipe = recipe.replace("[aaa, bbb, eng]", "[rus, cmn, arb, hin, amh, ell, eng]").replace(
        "    books: {kind: fixed, share: 0.5, languages: [eng]}\n", ""
    )
    (tmp_path / "prep.yaml").write_text(recipe)
    out = tmp_path / "prep_plan"
    assert mmbert(["plan", str(tmp_path / "prep.yaml"), "--out", str(out)]) == 0
    rows = read_rows(out.with_suffix(".csv"))
    assert {item for _, item in rows} == {"rus", "cmn", "arb", "hin", "amh", "ell", "eng"}
    assert float(rows[("prep", "rus")]["tokens_available"]) == web["rus_Cyrl"]["tokens"]
    n = {
        lang: web[folder]["tokens"]
        for lang, folder in (("rus", "rus_Cyrl"), ("cmn", "cmn_Hani"), ("eng", "eng"))
    }
    n.update({x: web[x]["tokens"] for x in ("arb", "hin", "amh", "ell")})
    norm = sum(v**0.5 for v in n.values())
    for lang, tokens in n.items():
        assert float(rows[("prep", lang)]["share"]) == pytest.approx(tokens**0.5 / norm, rel=1e-12)
        assert float(rows[("prep", lang)]["epochs"]) == pytest.approx(
            5000 * tokens**0.5 / norm / tokens, rel=1e-12
        )
    assert "ignored: code" in capsys.readouterr().out  # tha and code have data but are not in the set
