"""Temperature sampling, the phase plan (token shares -> Streaming sample proportions) and data validation."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mmbert_train.data.languages import read_counts_csv, read_language_file
from mmbert_train.data.sampling import (
    NOT_IN_SET,
    SERVED_BY_FIXED,
    DataValidationError,
    build_phase_plan,
    temperature_proportions,
    token_to_sample_proportions,
)
from mmbert_train.data.spec import DataConfig, SourceConfig

LANGUAGES_DIR = Path(__file__).resolve().parents[1] / "recipes" / "languages"


def counts(tokens: int, samples: int) -> dict[str, int]:
    return {"documents": samples, "samples": samples, "tokens": tokens, "skipped": 0, "heldout_documents": 0}


def manifest_of(sources: dict[str, dict[str, tuple[int, int]]]) -> dict:
    """A manifest dict from {source: {folder: (tokens, samples)}}."""
    return {
        "tokenizer": "test",
        "max_seq_len": 128,
        "sources": {s: {f: counts(*ts) for f, ts in folders.items()} for s, folders in sources.items()},
    }


def data_cfg(root, languages, sources, tau=0.5, **kw) -> DataConfig:
    """A data section reading ``sources`` (a list of SourceConfig, in reading order)."""
    return DataConfig(
        root=str(root),
        languages=languages,
        tau=tau,
        sources={s.name: s for s in sources},
        max_seq_len=128,
        mask_ratio=0.3,
        **kw,
    )


# --------------------------------------------------------------------------------------------- the formula


@pytest.mark.parametrize("tau", [1.0, 0.7, 0.5, 0.3, 0.05])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_proportions_equal_the_formula(tau, seed):
    rng = np.random.default_rng(seed)
    n = rng.integers(1, 40)
    values = (10 ** rng.uniform(0, 12, size=n)).astype(np.int64) + 1
    token_counts = {f"l{i:02d}": int(v) for i, v in enumerate(values)}
    got = temperature_proportions(token_counts, tau)
    N = float(sum(token_counts.values()))
    direct = {k: (v / N) ** tau for k, v in token_counts.items()}
    norm = sum(direct.values())
    assert list(got) == list(token_counts)
    for k in token_counts:
        assert abs(got[k] - direct[k] / norm) < 1e-12
    assert abs(sum(got.values()) - 1.0) < 1e-12


def test_tau_one_is_natural_and_zero_counts_get_zero():
    token_counts = {"a": 700, "b": 200, "c": 100, "d": 0}
    got = temperature_proportions(token_counts, 1.0)
    assert got == pytest.approx({"a": 0.7, "b": 0.2, "c": 0.1, "d": 0.0}, abs=1e-15)
    assert temperature_proportions(token_counts, 0.3)["d"] == 0.0


def test_small_tau_flattens():
    token_counts = {"big": 10**12, "mid": 10**8, "small": 10**5}
    ratios = []
    for tau in (1.0, 0.7, 0.5, 0.3, 0.1):
        p = temperature_proportions(token_counts, tau)
        ratios.append(p["big"] / p["small"])
        assert p["big"] > p["mid"] > p["small"]  # order is kept
    assert all(a > b for a, b in zip(ratios, ratios[1:]))  # strictly flatter as tau falls
    assert ratios[0] == pytest.approx(10**7)
    nearly_uniform = temperature_proportions(token_counts, 1e-9)
    assert all(abs(v - 1 / 3) < 1e-6 for v in nearly_uniform.values())


@pytest.mark.parametrize("tau", [0, -0.5, 1.5, float("nan")])
def test_formula_rejects_tau_outside_range(tau):
    with pytest.raises(DataValidationError, match=r"tau must be in \(0, 1\]"):
        temperature_proportions({"a": 1}, tau)


def test_token_shares_to_sample_proportions():
    # equal token shares; stream b has 10x shorter samples, so it needs 10x the samples
    q = token_to_sample_proportions([0.5, 0.5], [100.0, 10.0])
    assert q == pytest.approx([1 / 11, 10 / 11], abs=1e-15)
    t = [0.2, 0.3, 0.5]
    k = [7.0, 300.0, 41.5]
    q = token_to_sample_proportions(t, k)
    delivered = np.array(q) * np.array(k)
    assert delivered / delivered.sum() == pytest.approx(t, abs=1e-12)


# --------------------------------------------------------------------------------------------- the plan

MIXED = {
    "fineweb2": {
        "rus_Cyrl": (8_000, 40),  # 200 tokens per sample
        "deu": (1_000, 50),  # 20
        "fra": (100, 10),  # 10
        "xho": (50, 5),  # has data, not in the set
        "eng": (999, 9),  # served by the fixed source, not by the tau split
    },
    "hplt": {"rus": (2_000, 20)},  # 100
    "dclm": {"eng": (30_000, 100)},
    "starcoder": {"code": (5_000, 25)},
}
MIXED_SOURCES = [
    SourceConfig("fineweb2"),
    SourceConfig("hplt"),
    SourceConfig("dclm", kind="fixed", share=0.3, languages=["eng"]),
    SourceConfig("starcoder", kind="fixed", share=0.05, languages=["code"]),
]


def test_phase_plan_splits_by_tau_and_converts_to_sample_proportions(tmp_path):
    cfg = data_cfg(tmp_path, ["eng", "code", "rus", "deu", "fra"], MIXED_SOURCES, tau=0.5)
    plan = build_phase_plan(cfg, manifest_of(MIXED), check_files=False)

    assert plan.languages == ["eng", "code", "rus", "deu", "fra"]
    assert plan.fixed_languages == ["code", "eng"]
    assert plan.multilingual_share == pytest.approx(0.65)
    assert plan.language_tokens == {"rus": 10_000, "deu": 1_000, "fra": 100}
    # by hand: (n_i/N)^0.5 with N = 11100: sqrt(10000), sqrt(1000), sqrt(100) share the common 1/sqrt(N)
    w = {"rus": 100.0, "deu": math.sqrt(1000), "fra": 10.0}
    for lang, weight in w.items():
        assert plan.language_shares[lang] == pytest.approx(0.65 * weight / sum(w.values()), abs=1e-12)

    by_folder = {(e.source, e.folder): e for e in plan.entries}
    assert set(by_folder) == {
        ("dclm", "eng"),
        ("starcoder", "code"),
        ("fineweb2", "rus_Cyrl"),
        ("hplt", "rus"),
        ("fineweb2", "deu"),
        ("fineweb2", "fra"),
    }
    # rus_Cyrl counts toward rus; rus's share is split between its two folders by tokens (8000 : 2000)
    assert by_folder[("fineweb2", "rus_Cyrl")].language == "rus"
    rus = plan.language_shares["rus"]
    assert by_folder[("fineweb2", "rus_Cyrl")].token_share == pytest.approx(0.8 * rus, abs=1e-12)
    assert by_folder[("hplt", "rus")].token_share == pytest.approx(0.2 * rus, abs=1e-12)
    assert by_folder[("dclm", "eng")].token_share == pytest.approx(0.3)
    assert by_folder[("starcoder", "code")].token_share == pytest.approx(0.05)
    assert sum(e.token_share for e in plan.entries) == pytest.approx(1.0, abs=1e-12)

    # sample proportions: q_s proportional to t_s / k_s, and they deliver the token shares back
    raw = {key: e.token_share / e.tokens_per_sample for key, e in by_folder.items()}
    for key, e in by_folder.items():
        assert e.proportion == pytest.approx(raw[key] / sum(raw.values()), abs=1e-12)
    mean_k = plan.mean_tokens_per_sample
    for e in plan.entries:
        assert e.proportion * e.tokens_per_sample / mean_k == pytest.approx(e.token_share, abs=1e-12)
    assert plan.samples_for_tokens(10**6) == math.ceil(10**6 / mean_k)

    # data the phase leaves out is reported, with the reason
    skipped = {(s.source, s.folder): s.reason for s in plan.skipped}
    assert skipped == {("fineweb2", "xho"): NOT_IN_SET, ("fineweb2", "eng"): SERVED_BY_FIXED}
    assert plan.ignored_languages == {"xho": 50}


def test_fixed_source_without_language_list_keeps_languages_in_the_split(tmp_path):
    # MegaWika-like: a fixed share over all its folders, on top of the tau split, excluding nothing from it
    megawika = {"rus": (600, 6), "deu": (300, 3), "eng": (100, 1), "xho": (700, 7)}  # xho: not in the set
    manifest = manifest_of({**MIXED, "megawika": megawika})
    sources = [*MIXED_SOURCES, SourceConfig("megawika", kind="fixed", share=0.1)]
    cfg = data_cfg(tmp_path, ["eng", "code", "rus", "deu", "fra"], sources, tau=0.5)
    plan = build_phase_plan(cfg, manifest, check_files=False)
    assert plan.fixed_languages == ["code", "eng"]
    assert set(plan.language_shares) == {"rus", "deu", "fra"}
    assert sum(plan.language_shares.values()) == pytest.approx(0.55)
    mw = {e.folder: e.token_share for e in plan.entries if e.source == "megawika"}
    assert mw == pytest.approx({"rus": 0.06, "deu": 0.03, "eng": 0.01})
    assert plan.fixed_tokens == {"dclm": 30_000, "starcoder": 5_000, "megawika": 1_000}
    assert plan.ignored_languages == {"xho": 750}  # fineweb2's 50 + megawika's 700
    only_xho = manifest_of({**MIXED, "megawika": {"xho": (700, 7)}})
    with pytest.raises(
        DataValidationError, match=r"fixed source 'megawika' has no training tokens in the phase's"
    ):
        build_phase_plan(cfg, only_xho, check_files=False)


def test_streams_carry_paths_and_proportions(tmp_path):
    cfg = data_cfg(tmp_path, ["eng", "code", "rus", "deu", "fra"], MIXED_SOURCES)
    plan = build_phase_plan(cfg, manifest_of(MIXED), check_files=False)
    streams = plan.streams()
    assert [s.local for s in streams] == [str(tmp_path / e.source / e.folder) for e in plan.entries]
    assert all(s.remote is None for s in streams)
    assert [s.proportion for s in streams] == [e.proportion for e in plan.entries]
    remote = plan.streams(remote="s3://bucket/mds", local="/cache", download_retry=5)
    assert remote[0].remote == f"s3://bucket/mds/{plan.entries[0].source}/{plan.entries[0].folder}"
    assert remote[0].local == f"/cache/{plan.entries[0].source}/{plan.entries[0].folder}"


def test_source_languages_filter_and_inline_script_ids(tmp_path):
    sources = [
        SourceConfig("fineweb2", languages=["rus", "deu"]),
        SourceConfig("dclm", kind="fixed", share=0.5, languages=["eng"]),
    ]
    cfg = data_cfg(tmp_path, ["rus_Cyrl", "deu"], sources, tau=1.0)
    plan = build_phase_plan(cfg, manifest_of(MIXED), check_files=False)
    assert plan.languages == ["rus", "deu"]
    assert plan.language_shares == pytest.approx({"rus": 0.5 * 8 / 9, "deu": 0.5 * 1 / 9})
    assert {s.folder for s in plan.skipped if s.source == "fineweb2"} == {"fra", "xho", "eng"}


def test_script_variants_of_one_language_share_its_share(tmp_path):
    manifest = manifest_of({"web": {"srp_Cyrl": (300, 3), "srp_Latn": (100, 4), "deu": (400, 4)}})
    plan = build_phase_plan(data_cfg(tmp_path, ["srp", "deu"], [SourceConfig("web")], tau=0.3), manifest,
                            check_files=False)  # fmt: skip
    assert plan.language_tokens == {"srp": 400, "deu": 400}
    assert plan.language_shares == pytest.approx({"srp": 0.5, "deu": 0.5})
    shares = {e.folder: e.token_share for e in plan.entries}
    assert shares == pytest.approx({"srp_Cyrl": 0.375, "srp_Latn": 0.125, "deu": 0.5})
    # entries follow the set's order (then source order, then folder name): stable streams for a given recipe
    assert [e.folder for e in plan.entries] == ["srp_Cyrl", "srp_Latn", "deu"]


def test_language_file_is_found_next_to_the_recipe_then_in_the_working_directory(tmp_path, monkeypatch):
    from mmbert_train.data.languages import LanguageSetError, find_language_file

    (tmp_path / "recipe").mkdir()
    (tmp_path / "recipe" / "langs.txt").write_text("# my set\nrus_Cyrl\n\ndeu  # German\nfra\n")
    cfg = data_cfg("unused", "langs.txt", [SourceConfig("fineweb2")])
    plan = build_phase_plan(cfg, manifest_of(MIXED), recipe_dir=tmp_path / "recipe", check_files=False)
    assert plan.languages == ["rus", "deu", "fra"]
    cfg.recipe_dir = str(tmp_path / "recipe")  # as load_recipe records it: the default recipe_dir
    assert build_phase_plan(cfg, manifest_of(MIXED), check_files=False).languages == ["rus", "deu", "fra"]
    # the working directory next: the shipped recipes name theirs from the repository root
    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "langs.txt").write_text("eng\n")
    monkeypatch.chdir(tmp_path)
    assert find_language_file("sets/langs.txt", tmp_path / "recipe") == tmp_path / "sets" / "langs.txt"
    assert (
        find_language_file("langs.txt", tmp_path / "recipe") == tmp_path / "recipe" / "langs.txt"
    )  # recipe first
    with pytest.raises(
        LanguageSetError,
        match=r"'nope.txt' not found \(tried .*recipe/nope.txt, .*/nope.txt\); a "
        r"relative path is resolved against the recipe's folder and the working directory",
    ):
        find_language_file("nope.txt", tmp_path / "recipe")


def test_published_language_sets():
    sets = {
        name: read_language_file(LANGUAGES_DIR / f"{name}.txt")
        for name in ("phase1_pretrain", "phase2_midtrain", "decay_eng", "decay_cont", "phase3_decay_all")
    }
    sizes = {name: len(ids) for name, ids in sets.items()}
    assert sizes == {
        "phase1_pretrain": 61,
        "phase2_midtrain": 110,
        "decay_eng": 110,
        "decay_cont": 110,
        "phase3_decay_all": 1834,
    }
    assert set(sets["phase1_pretrain"]) < set(sets["phase2_midtrain"]) < set(sets["phase3_decay_all"])
    assert set(sets["decay_eng"]) == set(sets["decay_cont"]) == set(sets["phase2_midtrain"])
    for ids in sets.values():
        assert {"eng", "code"} <= set(ids)
    ext = read_counts_csv(LANGUAGES_DIR / "language_counts.csv", "ext")
    assert {k for k, v in ext.items() if v > 0} == set(sets["phase2_midtrain"])


# --------------------------------------------------------------------------------------------- validation


def _write_index(root: Path, manifest: dict) -> None:
    for source, folders in manifest["sources"].items():
        for folder in folders:
            (root / source / folder).mkdir(parents=True, exist_ok=True)
            (root / source / folder / "index.json").write_text("{}")
    (root / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "languages, sources, message",
    [
        (["rus", "zul"], MIXED_SOURCES, r"no data for language 'zul'"),
        (["rus", "zul", "yor"], MIXED_SOURCES, r"no data for language 'zul', 'yor'"),
        (
            ["rus"],
            [SourceConfig("fineweb2"), SourceConfig("nope")],
            r"source 'nope' does not exist in the manifest",
        ),
        (
            ["rus"],
            [SourceConfig("fineweb2", languages=["rus", "zul"])],
            r"source 'fineweb2' has no folder for language 'zul'",
        ),
        (
            ["rus"],
            [
                SourceConfig("fineweb2"),
                SourceConfig("dclm", kind="fixed", share=0.7),
                SourceConfig("starcoder", kind="fixed", share=0.3),
            ],
            r"fixed shares add up to 1 \(dclm 0.7 \+ starcoder 0.3\)",
        ),
        (
            ["eng"],
            [SourceConfig("dclm", kind="fixed", share=0.3, languages=["eng"])],
            r"no multilingual source to take the remaining share 0.7",
        ),
        (
            ["eng", "code"],
            MIXED_SOURCES,
            r"every language of the set is served by a fixed source \('code', 'eng'\)",
        ),
        (["rus", "rus_Cyrl"], MIXED_SOURCES, r"language 'rus' is listed twice"),
        (["rus", "Russian"], MIXED_SOURCES, r"data.languages\[1\]: 'Russian' is not a language id"),
    ],
)
def test_validation_errors_name_the_item(tmp_path, languages, sources, message):
    with pytest.raises(DataValidationError, match=message):
        build_phase_plan(data_cfg(tmp_path, languages, sources), manifest_of(MIXED), check_files=False)


@pytest.mark.parametrize("tau", [0.0, 1.5, -1.0])
def test_data_config_rejects_tau(tmp_path, tau):
    with pytest.raises(DataValidationError, match=rf"data.tau must be in \(0, 1\], got {tau}"):
        data_cfg(tmp_path, ["rus"], MIXED_SOURCES, tau=tau)


def test_validation_of_files_on_disk(tmp_path):
    manifest = manifest_of(MIXED)
    _write_index(tmp_path, manifest)
    cfg = data_cfg(tmp_path, ["eng", "code", "rus", "deu", "fra"], MIXED_SOURCES)
    assert len(build_phase_plan(cfg).entries) == 6  # reads root/manifest.json and finds every folder

    (tmp_path / "fineweb2" / "deu" / "index.json").unlink()
    with pytest.raises(
        DataValidationError, match=r"fineweb2/deu \(source 'fineweb2', language 'deu'\) .* no MDS index.json"
    ):
        build_phase_plan(cfg)
    # a folder the phase does not read may be missing
    (tmp_path / "fineweb2" / "deu" / "index.json").write_text("{}")
    (tmp_path / "fineweb2" / "xho" / "index.json").unlink()
    build_phase_plan(cfg)

    for folder in (tmp_path / "starcoder").iterdir():
        (folder / "index.json").unlink()
        folder.rmdir()
    (tmp_path / "starcoder").rmdir()
    with pytest.raises(DataValidationError, match=r"source folder .*starcoder does not exist"):
        build_phase_plan(cfg)
    # with a remote, the local root is only a cache: nothing to check on disk
    cfg.remote = "s3://bucket/mds"
    assert build_phase_plan(cfg).remote == "s3://bucket/mds"


def test_missing_manifest_and_language_file_are_named(tmp_path):
    cfg = data_cfg(tmp_path / "nowhere", ["rus"], MIXED_SOURCES)
    with pytest.raises(DataValidationError, match=r"nowhere"):
        build_phase_plan(cfg)
    cfg = data_cfg(tmp_path, "missing_langs.txt", MIXED_SOURCES)
    with pytest.raises(DataValidationError, match=r"language file 'missing_langs.txt' not found \(tried "):
        build_phase_plan(cfg, manifest_of(MIXED), recipe_dir=tmp_path)
    (tmp_path / "bad.txt").write_text("rus\ndeu\nGerman\n")
    cfg = data_cfg(tmp_path, "bad.txt", MIXED_SOURCES)
    with pytest.raises(DataValidationError, match=r"bad.txt:3: 'German' is not a language id"):
        build_phase_plan(cfg, manifest_of(MIXED), recipe_dir=tmp_path)


# ------------------------------------------------------------------------------- all 1834 published ids


def _published_manifest() -> tuple[dict, dict[str, int]]:
    """FineWeb2-like folders for every published id (some with script suffixes), DCLM eng, StarCoder code."""
    decay_all = read_counts_csv(LANGUAGES_DIR / "language_counts.csv", "decay-all")
    suffix = {"rus": "rus_Cyrl", "cmn": "cmn_Hani", "arb": "arb_Arab", "srp": "srp_Cyrl", "aai": "aai_Latn"}
    fineweb = {
        suffix.get(lang, lang): (n, max(1, n // 700))
        for lang, n in decay_all.items()
        if lang not in ("eng", "code") and n
    }
    manifest = manifest_of(
        {
            "fineweb2": fineweb,
            "dclm": {"eng": (decay_all["eng"], 10**6)},
            "starcoder": {"code": (decay_all["code"], 10**5)},
        }
    )
    return manifest, decay_all


def test_synthetic_manifest_with_all_published_ids(tmp_path):
    manifest, decay_all = _published_manifest()
    assert len(manifest["sources"]["fineweb2"]) == 1832
    sources = [
        SourceConfig("fineweb2"),
        SourceConfig("dclm", kind="fixed", share=0.101, languages=["eng"]),
        SourceConfig("starcoder", kind="fixed", share=0.03, languages=["code"]),
    ]
    cfg = data_cfg(tmp_path, str(LANGUAGES_DIR / "phase3_decay_all.txt"), sources, tau=0.3)
    plan = build_phase_plan(cfg, manifest, check_files=False)
    assert len(plan.languages) == 1834 and len(plan.language_shares) == 1832
    assert len(plan.entries) == 1834
    assert plan.ignored_languages == {}
    assert sum(e.token_share for e in plan.entries) == pytest.approx(1.0, abs=1e-9)
    assert sum(e.proportion for e in plan.entries) == pytest.approx(1.0, abs=1e-9)
    assert all(e.proportion > 0 for e in plan.entries)
    assert plan.language_tokens["rus"] == decay_all["rus"]  # rus_Cyrl counts toward rus
    expected = temperature_proportions({k: decay_all[k] for k in plan.language_shares}, 0.3)
    for lang, share in plan.language_shares.items():
        assert share == pytest.approx(0.869 * expected[lang], rel=1e-9)

    # the pre-training set over the same data: 1773 languages with data are left out and reported
    cfg = data_cfg(tmp_path, str(LANGUAGES_DIR / "phase1_pretrain.txt"), sources, tau=0.7)
    plan = build_phase_plan(cfg, manifest, check_files=False)
    assert len(plan.language_shares) == 59
    assert len(plan.ignored_languages) == 1834 - 61
    assert "aai" in plan.ignored_languages and "rus" not in plan.ignored_languages

    # and a set naming an id without data says which
    del manifest["sources"]["fineweb2"]["srp_Cyrl"]
    cfg = data_cfg(tmp_path, str(LANGUAGES_DIR / "phase3_decay_all.txt"), sources, tau=0.3)
    with pytest.raises(DataValidationError, match=r"no data for language 'srp'"):
        build_phase_plan(cfg, manifest, check_files=False)


# ------------------------------------------------------------------------- delivered shares via Streaming


def _write_mds(folder: Path, n_samples: int, length: int, marker: int) -> None:
    from streaming import MDSWriter

    with MDSWriter(out=str(folder), columns={"input_ids": "ndarray:uint32"}, compression="zstd") as writer:
        for _ in range(n_samples):
            writer.write({"input_ids": np.full(length, marker, dtype=np.uint32)})


def test_streaming_delivers_the_planned_token_shares(tmp_path):
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    # three languages with very different tokens per sample (8, 64, 200)
    layout = {"aaa": (40, 8, 11), "bbb": (30, 64, 12), "ccc": (20, 200, 13)}
    folders = {}
    for lang, (n, length, marker) in layout.items():
        _write_mds(tmp_path / "web" / lang, n, length, marker)
        folders[lang] = (n * length, n)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest_of({"web": folders})))
    cfg = data_cfg(tmp_path, ["aaa", "bbb", "ccc"], [SourceConfig("web")], tau=0.3)
    plan = build_phase_plan(cfg)

    clean_stale_shared_memory()
    epoch_size = plan.samples_for_tokens(100_000)
    dataset = StreamingDataset(
        streams=plan.streams(), epoch_size=epoch_size, shuffle=True, shuffle_seed=7, batch_size=1
    )
    delivered, drawn = Counter(), Counter()
    for sample in dataset:
        ids = sample["input_ids"]
        delivered[int(ids[0])] += len(ids)
        drawn[int(ids[0])] += 1
    total = sum(delivered.values())
    assert total == pytest.approx(100_000, rel=0.01)
    # Streaming draws floor(epoch_size * q_s) samples per stream (+1 for a few): exact up to one sample per
    # stream, so each token share is exact up to the rounding of every stream: sum_j k_j / total
    entry = {e.language: e for e in plan.entries}
    rounding = sum(length for _, length, _ in layout.values()) / total
    for lang, (_, _, marker) in layout.items():
        assert abs(drawn[marker] - epoch_size * entry[lang].proportion) <= 1
        assert delivered[marker] / total == pytest.approx(plan.language_shares[lang], abs=rounding)
    # the natural (tau = 1) token shares would be 320 : 1920 : 4000; tau = 0.3 moves them a lot
    assert plan.language_shares["aaa"] > 0.15


def test_remote_root_fetches_the_manifest_and_streams_read_through_the_cache(tmp_path):
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    remote, cache = tmp_path / "remote", tmp_path / "cache"
    _write_mds(remote / "web" / "aaa", 6, 5, 21)
    _write_mds(remote / "web" / "bbb", 4, 9, 22)
    (remote / "manifest.json").write_text(json.dumps(manifest_of({"web": {"aaa": (30, 6), "bbb": (36, 4)}})))
    cfg = data_cfg(cache, ["aaa", "bbb"], [SourceConfig("web")], tau=1.0, remote=str(remote))
    plan = build_phase_plan(cfg)
    assert (cache / "manifest.json").read_text() == (remote / "manifest.json").read_text()
    assert [s.remote for s in plan.streams()] == [str(remote / "web" / "aaa"), str(remote / "web" / "bbb")]
    clean_stale_shared_memory()
    dataset = StreamingDataset(streams=plan.streams(), shuffle=False, batch_size=1)
    assert sorted(len(sample["input_ids"]) for sample in dataset) == [5] * 6 + [9] * 4
    assert (cache / "web" / "bbb" / "index.json").is_file()

    cfg = data_cfg(tmp_path / "cache2", ["aaa"], [SourceConfig("web")], remote=str(tmp_path / "nowhere"))
    with pytest.raises(DataValidationError, match=r"data.remote: cannot fetch .*nowhere/manifest.json"):
        build_phase_plan(cfg)
    assert list((tmp_path / "cache2").iterdir()) == []
