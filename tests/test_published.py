"""The published mmBERT data as published: discovery, the Streaming trap, plan shares, data check, training,
resume, and a download left byte-identical by all of it."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from mmbert_train.data.published import PublishedDataError, plan_source, scan_tree
from mmbert_train.data.testing import CHUNK_SUFFIX, tree_digest, write_published_tree

VOCAB = 4096
# source -> (id range, sample lengths per chunk); lengths differ per source so tokens != samples proportions
SOURCES = {
    "fineweb2-sampled-decay-v2": ((1000, 2000), [[40] * 30, [90] * 12]),
    "textbooks": ((2000, 3000), [[150] * 10]),
    "arxiv-sampled-decay": ((3000, 4000), [[25] * 24]),  # written without stats.json: tokens are counted
}
EMPTY = "starcoder-sample"


def leaf(source: str, chunk: int = 0) -> str:
    return f"{source}/chunk{chunk}{CHUNK_SUFFIX}"


def write_tree(root: Path, **kw) -> dict[str, int]:
    return write_published_tree(
        root,
        {s: chunks for s, (_, chunks) in SOURCES.items()},
        vocab_size=VOCAB,
        id_ranges={s: r for s, (r, _) in SOURCES.items()},
        without_stats=["arxiv-sampled-decay"],
        size_limit=1 << 12,  # several shards per leaf
        **kw,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("published")
    tokens = write_tree(base / "download" / "train")
    return base / "download" / "train", tokens


def published_cfg(path, cache, **kw):
    from mmbert_train.data.spec import DataConfig, SourceConfig

    source = SourceConfig(kind="published", path=str(path), exclude=[EMPTY])
    kw = dict(root=str(cache), sources={"decay": source}, max_seq_len=128, mask_ratio=0.3, num_workers=0, cache=str(cache),
              shuffle_seed=5) | kw  # fmt: skip
    return DataConfig(**kw)


def published_recipe(tmp_path: Path, root: Path, *, data: dict, **sections) -> Path:
    """tmp_path/r.yaml: the tiny model on the published tree ``root`` alone (its empty folder excluded), 5%
    masked; ``data`` adds to the data section, ``sections`` (trainer, optimizer, ...) are written as given."""
    source = {"kind": "published", "path": str(root), "exclude": [EMPTY]}
    recipe = {
        "name": "pub",
        "phase": "decay",
        "model": {"preset": "tiny", "vocab_size": VOCAB},
        "data": {"root": str(tmp_path), "cache": str(tmp_path / "cache"), "sources": {"decay": source},
                 "mask_ratio": 0.05} | data,
        **sections,
    }  # fmt: skip
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def source_of(token: int) -> str | None:
    for name, ((low, high), _) in SOURCES.items():
        if low <= token < high:
            return name
    return None


# ------------------------------------------------------------------------------------------ the layout


def test_fixture_has_the_published_layout(tree):
    root, _ = tree
    index = json.loads((root / leaf("textbooks") / "index.json").read_text())
    shard = index["shards"][0]
    assert shard["compression"] == "zstd" and shard["zip_data"]["basename"].endswith(".zstd")
    assert shard["column_names"] == ["id", "input_ids"] and shard["column_encodings"] == [
        "str",
        "ndarray:uint32",
    ]
    assert not list(root.rglob("*.zstd"))  # only raw shards were downloaded
    merged = json.loads((root / "index.json").read_text())["shards"]
    assert merged[0]["raw_data"]["basename"].startswith("fineweb2-sampled-decay-v2/chunk0-")
    assert sorted(p.name for p in (root / EMPTY).iterdir()) == ["num_tokens.json"]


def test_scan_finds_leaves_not_merged_indexes(tree):
    root, tokens = tree
    found = scan_tree(root)
    assert [x.path for x in found.leaves] == sorted(tokens)
    assert found.merged == [".", "arxiv-sampled-decay", "fineweb2-sampled-decay-v2", "textbooks"]
    assert found.empty == [EMPTY]
    assert {x.path: x.samples for x in found.leaves} == {
        leaf(s, c): len(lengths) for s, (_, chunks) in SOURCES.items() for c, lengths in enumerate(chunks)
    }


def test_folder_without_data_is_an_error_unless_excluded(tree, tmp_path):
    root, _ = tree
    with pytest.raises(PublishedDataError, match=f"'{EMPTY}'.*exclude"):
        plan_source(root, cache=tmp_path)
    for glob in (EMPTY, EMPTY + "/*"):
        assert len(plan_source(root, exclude=[glob], cache=tmp_path)) == 4


def test_include_and_exclude_globs_select_datasets(tree, tmp_path):
    root, _ = tree
    got = plan_source(root, include=["fineweb2-*"], exclude=[EMPTY, "*chunk1-*"], cache=tmp_path)
    assert [x.path for x in got] == [leaf("fineweb2-sampled-decay-v2")]


def test_merged_index_listing_a_shard_no_leaf_lists_is_an_error(tmp_path):
    root = tmp_path / "train"
    write_tree(root)
    os.remove(root / leaf("textbooks") / "index.json")  # the leaf's own index missing from the download
    with pytest.raises(
        PublishedDataError,
        match=r"index.json: lists 2 shard\(s\) that no leaf index.json lists, e.g. 'textbooks/chunk0-",
    ):
        scan_tree(root)


def test_streaming_deletes_raw_shards_of_a_downloaded_folder_but_not_through_ours(tree, tmp_path):
    """Streaming 0.13 given a published leaf (index names zstd, zip absent, no remote) deletes the raw shards:
    the reason no code of ours points Streaming at a download."""
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    root, _ = tree
    copy = tmp_path / "copy"
    shutil.copytree(root / leaf("textbooks"), copy)
    clean_stale_shared_memory()
    assert len(list(copy.glob("shard.*.mds"))) == 2
    with pytest.raises(Exception):  # noqa: B017 - what fails (and when) is Streaming's business; the loss is ours
        StreamingDataset(local=str(copy), batch_size=4)[0]
    assert not list(copy.glob("shard.*.mds"))  # gone

    before = tree_digest(root)
    streams = plan_source(root, include=["textbooks/*"], cache=tmp_path / "cache", exclude=[EMPTY])
    local = Path(streams[0].local)
    assert tmp_path / "cache" in local.parents
    assert all(p.is_symlink() for p in local.glob("shard.*.mds"))
    shard = json.loads((local / "index.json").read_text())["shards"][0]
    assert shard["compression"] is None and shard["zip_data"] is None
    ds = StreamingDataset(local=str(local), batch_size=4, shuffle=False)
    samples = [ds[i] for i in range(ds.num_samples)]
    assert (
        len(samples) == 10
        and samples[0]["input_ids"].dtype == np.uint32
        and samples[0]["id"] == "textbooks-0-0"
    )
    assert all(len(s["input_ids"]) == 150 and s["input_ids"][0] == 2 for s in samples)
    del ds
    assert tree_digest(root) == before


def test_cache_inside_the_download_is_refused(tree):
    root, _ = tree
    with pytest.raises(PublishedDataError, match="inside the downloaded folder"):
        plan_source(root, exclude=[EMPTY], cache=root / ".cache")


# ------------------------------------------------------------------------------------------- the plan


def test_plan_shares_are_token_proportions(tree, tmp_path):
    from mmbert_train.data.planner import table_from_plan
    from mmbert_train.data.sampling import build_phase_plan

    root, tokens = tree
    before = tree_digest(root)
    plan = build_phase_plan(published_cfg(root, tmp_path))
    total = sum(tokens.values())
    assert {e.folder: e.tokens for e in plan.entries} == tokens
    for e in plan.entries:
        assert e.kind == "published" and e.token_share == pytest.approx(tokens[e.folder] / total)
    # Streaming's proportions are per sample: q ∝ share / tokens-per-sample = tokens / (tokens / samples)
    samples = {leaf(s, c): len(x) for s, (_, ch) in SOURCES.items() for c, x in enumerate(ch)}
    for e in plan.entries:
        assert e.proportion == pytest.approx(samples[e.folder] / sum(samples.values()))
    assert plan.tau is None and plan.languages == []
    assert "stats.json (3)" in plan.notes[0] and "counted from the shards (1)" in plan.notes[0]
    cached = json.loads(next((tmp_path / "published").glob("*/tokens.json")).read_text())
    assert cached[leaf("arxiv-sampled-decay")]["tokens"] == 24 * 25
    table = table_from_plan("decay", plan, phase_tokens=1e6)
    rows = {r.item: r for r in table.rows}
    assert set(rows) == set(tokens) and all(r.kind == "published" for r in rows.values())
    assert rows[leaf("textbooks")].tokens_in_phase == pytest.approx(1e6 * 1500 / total)
    assert rows[leaf("textbooks")].epochs == pytest.approx(1e6 / total)
    assert tree_digest(root) == before


def test_plan_cli_prints_one_row_per_dataset(tree, tmp_path, capsys):
    from mmbert_train.commands.plan import main

    root, tokens = tree
    recipe = published_recipe(
        tmp_path,
        root,
        data={"max_seq_len": 128},
        trainer={"max_duration": "10000tok", "global_batch_size": 4, "autoresume": False},
    )
    assert main([str(recipe), "--out", str(tmp_path / "plan")]) == 0
    out = capsys.readouterr().out
    assert "4 published datasets (100.0%)" in out and "tau -" in out
    lines = (tmp_path / "plan.csv").read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    assert sorted(r[1] for r in rows) == sorted(tokens) and {r[2] for r in rows} == {"published"}
    total = sum(tokens.values())
    for r in rows:
        assert float(r[5]) == pytest.approx(tokens[r[1]] / total) and float(r[6]) == pytest.approx(
            1e4 * tokens[r[1]] / total
        )


def test_config_says_inherited_languages_are_unused(tree, tmp_path, capsys):
    from mmbert_train.commands.config import main

    root, _ = tree
    (tmp_path / "base.yaml").write_text(
        textwrap.dedent("""
        name: own
        phase: decay
        model: {preset: tiny}
        data: {root: mds, languages: [eng, fra], tau: 0.3, sources: {web: {}}, max_seq_len: 64,
               mask_ratio: 0.05}
        trainer: {max_duration: 10ba, global_batch_size: 4, autoresume: false}
    """)
    )
    (tmp_path / "pub.yaml").write_text(
        f"extends: base.yaml\ndata:\n  sources:\n    web: null\n    d: {{kind: published, path: {root}}}\n"
    )
    assert main([str(tmp_path / "pub.yaml")]) == 0
    err = capsys.readouterr().err
    assert "data.languages is set but unused" in err and "data.tau is set but unused" in err
    assert main([str(tmp_path / "base.yaml")]) == 0
    assert "unused" not in capsys.readouterr().err


def test_published_share_errors_name_the_sources(tree, tmp_path):
    from mmbert_train.data.sampling import DataValidationError, build_phase_plan
    from mmbert_train.data.spec import SourceConfig

    root, _ = tree
    cfg = published_cfg(root, tmp_path)
    cfg.sources = {"a": SourceConfig(name="a", kind="published", path=str(root), share=0.3, exclude=[EMPTY])}
    with pytest.raises(DataValidationError, match="add up to 0.3"):
        build_phase_plan(cfg)
    cfg.sources["web"] = SourceConfig(name="web", kind="multilingual")
    cfg.sources["a"] = SourceConfig(name="a", kind="published", path=str(root), exclude=[EMPTY])
    with pytest.raises(DataValidationError, match="'a' needs a share next to the multilingual"):
        build_phase_plan(cfg)
    with pytest.raises(ValueError, match="needs a path"):
        SourceConfig(name="b", kind="published")


# ------------------------------------------------------------------------------------------ data check


def test_data_check_passes_a_good_tree_without_writing(tree, capsys):
    from mmbert_train.commands.data_check import main

    root, _ = tree
    before = tree_digest(root)
    assert (
        main(
            ["check", str(root), "--vocab-size", str(VOCAB), "--exclude", EMPTY, "--shards-per-dataset", "9"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "4 datasets" in out and out.rstrip().endswith("OK")
    assert "1 dataset(s) without a usable stats.json" in out
    assert main(["check", str(root), "--vocab-size", str(VOCAB)]) == 1  # the empty folder, not excluded
    assert f"{root / EMPTY}: holds no MDS dataset" in capsys.readouterr().out
    assert tree_digest(root) == before


def test_data_check_names_what_is_wrong(tmp_path):
    from mmbert_train.commands.data_check import check_tree
    from mmbert_train.data.testing import write_leaf

    root = tmp_path / "train"
    write_tree(root, empty_sources=())
    tb = root / leaf("textbooks")
    os.remove(tb / "shard.00001.mds")
    fw = root / leaf("float-ids")  # a dataset whose ids were written as float32
    write_leaf(fw, [90] * 12, vocab_size=VOCAB, seed=3, dtype="float32")
    report = check_tree(root, vocab_size=VOCAB, shards_per_dataset=9)
    assert any(
        p.startswith(f"{tb / 'index.json'} shard 1 (shard.00001.mds): missing") for p in report.problems
    )
    assert any(str(fw) in p and "float32 is not an integer type" in p for p in report.problems)
    assert len(report.problems) == 2
    # ids outside the vocabulary (another tokenizer), samples longer than allowed
    report = check_tree(root, vocab_size=2500, max_seq_len=100, include=["textbooks/*", "arxiv*"])
    assert any("textbooks" in p and "ids outside [0, 2500)" in p for p in report.problems)
    assert any("arxiv" in p and "ids outside" in p for p in report.problems)
    assert any("textbooks" in p and "longer than 100 tokens" in p for p in report.problems)
    # a truncated shard
    arx = root / leaf("arxiv-sampled-decay") / "shard.00000.mds"
    arx.write_bytes(arx.read_bytes()[:-7])
    report = check_tree(root, vocab_size=VOCAB, include=["arxiv*"])
    assert report.problems and "bytes, index.json says" in report.problems[0]


# --------------------------------------------------------------------------------------- the loader


def own_corpus(root: Path) -> Path:
    """Our own per-language data: root/web/<lang>/ + manifest (ids of fra in [100, 500), deu in [500, 900))."""
    from streaming import MDSWriter

    rng = np.random.default_rng(1)
    counts = {}
    for lang, (low, length) in {"fra": (100, 50), "deu": (500, 70)}.items():
        with MDSWriter(out=str(root / "web" / lang), columns={"input_ids": "ndarray:uint32"}) as w:
            for _ in range(60):
                ids = rng.integers(low, low + 400, size=length).astype(np.uint32)
                ids[0], ids[-1] = 2, 1
                w.write({"input_ids": ids})
        counts[lang] = {
            "documents": 60,
            "samples": 60,
            "tokens": 60 * length,
            "skipped": 0,
            "heldout_documents": 0,
        }
    (root / "manifest.json").write_text(
        json.dumps({"tokenizer": "t", "max_seq_len": 128, "sources": {"web": counts}})
    )
    return root


def delivered(spec_or_dataset) -> dict[str, int]:
    from test_loader import documents

    got: dict[str, int] = {}
    for batch in spec_or_dataset:
        for doc in documents(batch):
            body = [t for t in doc if t > 4]
            if not body:
                continue
            name = source_of(body[0]) or ("fra" if body[0] < 500 else "deu")
            got[name] = got.get(name, 0) + len(doc)
    return got


def test_loader_delivers_the_planned_shares_alone_and_mixed(tree, tmp_path):
    from mmbert_train.data.loader import build_packed_dataset
    from mmbert_train.data.sampling import build_phase_plan
    from mmbert_train.data.spec import SourceConfig

    root, tokens = tree
    before = tree_digest(root)
    # alone: the published mixture, by source
    cfg = published_cfg(root, tmp_path / "c1", max_seq_len=256)
    ds = build_packed_dataset(cfg, global_batch_size=8, vocab_size=VOCAB, phase_tokens=200_000, block_samples=32,
                              rank=0, world_size=1, clean_shared_memory=False)  # fmt: skip
    got = delivered(ds)
    total = sum(got.values())
    assert total > 150_000
    by_source = {s: sum(n for p, n in tokens.items() if p.startswith(s + "/")) for s in SOURCES}
    for s in SOURCES:
        assert got[s] / total == pytest.approx(by_source[s] / sum(by_source.values()), abs=0.02), got
    del ds
    # mixed with our own per-language data: published share 0.4, the rest by tau
    own = own_corpus(tmp_path / "own")
    cfg = published_cfg(
        root, tmp_path / "c2", root=str(own), languages=["fra", "deu"], tau=0.5, max_seq_len=256
    )
    cfg.sources = {"web": SourceConfig(name="web"), "decay": SourceConfig(name="decay", kind="published",
                   path=str(root), share=0.4, exclude=[EMPTY])}  # fmt: skip
    plan = build_phase_plan(cfg)
    assert sum(e.token_share for e in plan.entries if e.kind == "published") == pytest.approx(0.4)
    assert plan.language_shares["fra"] + plan.language_shares["deu"] == pytest.approx(0.6)
    ds = build_packed_dataset(cfg, global_batch_size=8, vocab_size=VOCAB, phase_tokens=200_000, block_samples=32,
                              rank=0, world_size=1, clean_shared_memory=False)  # fmt: skip
    got = delivered(ds)
    total = sum(got.values())
    assert sum(got.get(s, 0) for s in SOURCES) / total == pytest.approx(0.4, abs=0.02)
    assert got["fra"] / total == pytest.approx(plan.language_shares["fra"], abs=0.02)
    del ds
    assert tree_digest(root) == before


def test_exact_resume_mid_epoch_over_published_streams(tree, tmp_path):
    from test_loader import assert_same_batches

    from mmbert_train.data.loader import build_packed_dataset

    root, _ = tree
    cfg = published_cfg(root, tmp_path, max_seq_len=64)

    def dataset():
        return build_packed_dataset(cfg, global_batch_size=4, vocab_size=VOCAB, phase_tokens=40_000,
                                    block_samples=8, rank=0, world_size=1, clean_shared_memory=False)  # fmt: skip

    first = dataset()
    it = iter(first)
    for _ in range(7):
        next(it)
    state = json.loads(json.dumps(first.state_dict(first.rows_in_epoch, True)))
    assert (
        first.buffered_rows > 0 or state["ranks"][0]["rows_into_block"] > 0 or state["ranks"][0]["block"] > 0
    )
    expected = [next(it) for _ in range(5)]
    del it, first
    second = dataset()
    second.load_state_dict(state)
    it = iter(second)
    resumed = [next(it) for _ in range(5)]
    assert_same_batches(expected, resumed)
    assert second.raw_samples_before_first_batch < 8 * (state["ranks"][0]["block"] + 1) + 8


# --------------------------------------------------------------------------------------------- training


@pytest.mark.slow
def test_training_and_resume_leave_the_download_byte_identical(tree, tmp_path):
    """mmbert data check, plan, a few CPU training batches on the published data alone, then resume to more
    batches: the download is byte-identical (same files, hashes and modes) at the end."""
    from mmbert_train.commands.data_check import main as check
    from mmbert_train.commands.plan import main as plan
    from mmbert_train.config import load_recipe
    from mmbert_train.train.trainer import build_trainer

    root, _ = tree
    before = tree_digest(root)
    recipe = published_recipe(
        tmp_path,
        root,
        data={"max_seq_len": 64, "num_workers": 0},
        optimizer={"lr": 1.0e-3},
        trainer={
            "max_duration": "3ba",
            "global_batch_size": 4,
            "save_folder": str(tmp_path / "ckpt"),
            "save_interval": "3ba",
            "progress_bar": False,
            "device": "cpu",
            "precision": "fp32",
        },
    )
    assert check(["check", str(root), "--recipe", str(recipe), "--exclude", EMPTY]) == 0
    assert plan([str(recipe), "--out", str(tmp_path / "plan")]) == 0
    trainer = build_trainer(load_recipe(recipe))
    trainer.fit()
    first_loss = float(trainer.state.loss)
    trainer.close()
    assert (tmp_path / "ckpt" / "latest-rank0.pt").exists()
    trainer = build_trainer(load_recipe(recipe, ["trainer.max_duration=5ba"]))  # autoresume from batch 3
    assert int(trainer.state.timestamp.batch) == 3
    trainer.fit()
    assert (
        int(trainer.state.timestamp.batch) == 5 and np.isfinite(float(trainer.state.loss)) and first_loss > 0
    )
    trainer.close()
    assert tree_digest(root) == before


# ------------------------------------------------------------------------------------- continue recipes

CONTINUE = sorted((Path(__file__).parents[1] / "recipes" / "continue").glob("*.yaml"))


def test_every_continue_recipe_resolves():
    from mmbert_train.commands.config import main
    from mmbert_train.merge.config import MergeConfig
    from mmbert_train.schema import from_dict, load_yaml

    training = [p for p in CONTINUE if not p.stem.endswith("_merge")]
    assert {p.stem for p in training} == {"base_decay_eng_replay", "add_languages", "add_domain"}
    for path in training:
        assert main([str(path)]) == 0, path
    for path in CONTINUE:
        if path.stem.endswith("_merge"):
            config = from_dict(MergeConfig, load_yaml(path, []), str(path))
            assert config.method == "ties" and config.base == "models/mmBERT-base"


@pytest.mark.slow
def test_add_languages_recipe_trains_on_fixtures(tmp_path, monkeypatch):
    """recipes/continue/add_languages.yaml as shipped, on a tiny HF start, our per-language data and a published
    replay tree laid out where the recipe expects them; two CPU batches; the replay download unchanged."""
    from mmbert_train.config import load_recipe
    from mmbert_train.model import MMBertForMaskedLM, ModelConfig, save_pretrained
    from mmbert_train.train.trainer import build_trainer

    recipe = Path(__file__).parents[1] / "recipes" / "continue" / "add_languages.yaml"
    monkeypatch.chdir(tmp_path)
    # the shipped recipes name their language files from the repository root (recipes/languages/...)
    (tmp_path / "recipes").symlink_to(recipe.parents[1])
    replay = tmp_path / "data" / "published" / "mmBERT-decay-data" / "train"
    write_tree(replay)
    own = own_corpus(tmp_path / "data" / "mds")
    (own / "web").rename(own / "my_corpus")
    manifest = json.loads((own / "manifest.json").read_text())
    manifest["sources"] = {"my_corpus": manifest["sources"]["web"]}
    (own / "manifest.json").write_text(json.dumps(manifest))
    save_pretrained(
        MMBertForMaskedLM(ModelConfig.preset("tiny", vocab_size=VOCAB)), tmp_path / "models" / "mmBERT-base"
    )
    before = tree_digest(replay)
    overrides = [
        "model.preset=tiny", f"model.vocab_size={VOCAB}", "data.languages=[fra,deu]", "data.max_seq_len=64",
        "data.num_workers=0", f"data.cache={tmp_path / 'cache'}", "trainer.max_duration=2ba",
        "trainer.global_batch_size=4", "trainer.device_microbatch_size=2", "trainer.parallelism=auto",
        "trainer.device=cpu", "trainer.precision=fp32", "trainer.compile=false", "eval.enabled=false",
        f"trainer.save_folder={tmp_path / 'ckpt'}", "trainer.save_interval=2ba",
    ]  # fmt: skip
    trainer = build_trainer(load_recipe(recipe, overrides))
    trainer.fit()
    assert int(trainer.state.timestamp.batch) == 2 and np.isfinite(float(trainer.state.loss))
    trainer.close()
    assert (tmp_path / "ckpt" / "latest-rank0.pt").exists()
    assert tree_digest(replay) == before
