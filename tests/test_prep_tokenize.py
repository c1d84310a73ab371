"""`mmbert prep tokenize`: raw text -> MDS shards + manifest (Contract 2)."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest

from data_prep import tokenize as tokmod
from data_prep.cli import main as prep_main
from data_prep.readers import RawInputError
from data_prep.testing import SAMPLE_TEXTS, make_raw_corpus, make_tokenizer, write_jsonl
from data_prep.tokenize import plan_raw, run_tokenize
from mmbert_train.data.languages import LanguageNameError
from mmbert_train.data.manifest import load_manifest
from mmbert_train.data.mds import iter_input_ids
from mmbert_train.processes import pythonpath_with

BOS, EOS = 2, 1


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer")


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def tokenize(raw, out, tok, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("log", lambda _: None)
    return run_tokenize(plan_raw(raw), out, str(tok), **kw)


def samples(folder: Path) -> list[list[int]]:
    return [ids.tolist() for ids in iter_input_ids(folder)]


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_round_trip_every_script_with_chunking(tmp_path, tokenizer_dir, hf_tokenizer):
    from tokenizers import Tokenizer

    # what tokenize does: text that spells a special token ("<mask>" in the code sample) stays text
    reference = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    reference.encode_special_tokens = True
    raw = make_raw_corpus(tmp_path / "raw")
    max_len = 8  # forces most documents across several samples
    tokenize(raw, tmp_path / "mds", tokenizer_dir, max_seq_len=max_len, heldout_fraction=0.0)
    for language, texts in SAMPLE_TEXTS.items():
        got = samples(tmp_path / "mds" / "web" / language)
        assert all(len(s) <= max_len and s[0] == BOS and s[-1] == EOS for s in got)
        assert all(BOS not in s[1:-1] and EOS not in s[1:-1] for s in got)
        pos = 0
        for text in texts:
            doc = f"{text} [0]"
            ids = reference.encode(doc, add_special_tokens=False).ids
            n = math.ceil(len(ids) / (max_len - 2))
            content = [t for s in got[pos : pos + n] for t in s[1:-1]]
            pos += n
            assert content == ids, language  # no token lost at chunk boundaries
            assert hf_tokenizer.decode(content, clean_up_tokenization_spaces=False) == doc
        assert pos == len(got)


def test_manifest_counts_match_what_was_written(tmp_path, tokenizer_dir):
    raw = make_raw_corpus(tmp_path / "raw", repeat=4)
    summary = tokenize(raw, tmp_path / "mds", tokenizer_dir, max_seq_len=16, heldout_fraction=0.2)
    manifest = load_manifest(tmp_path / "mds")
    assert manifest == summary.manifest
    assert manifest["max_seq_len"] == 16
    assert manifest["tokenizer"] == str(tokenizer_dir.resolve())
    assert set(manifest["sources"]["web"]) == set(SAMPLE_TEXTS)
    for language, counts in manifest["sources"]["web"].items():
        folder = tmp_path / "mds" / "web" / language
        train = samples(folder)
        assert counts["samples"] == len(train)
        assert counts["tokens"] == sum(map(len, train))
        assert counts["documents"] == 4 * len(SAMPLE_TEXTS[language])
        assert counts["skipped"] == 0
        assert counts["heldout_documents"] >= 1  # every language here has two or more documents
        assert (folder / "heldout" / "index.json").exists()
    assert summary.documents == sum(c["documents"] for c in manifest["sources"]["web"].values())


def _docs(folder: Path, hf_tokenizer) -> list[str]:
    """Decode a dataset back into documents (valid when no document is longer than one sample)."""
    return [hf_tokenizer.decode(s[1:-1], clean_up_tokenization_spaces=False) for s in samples(folder)]


def test_heldout_split_deterministic_disjoint_and_at_least_one(tmp_path, tokenizer_dir, hf_tokenizer):
    raw = tmp_path / "raw"
    texts = [f"document number {i} says hello" for i in range(300)]
    write_jsonl(raw / "web" / "eng" / "a.jsonl", [{"text": t} for t in texts[:150]])
    write_jsonl(raw / "web" / "eng" / "b.jsonl", [{"text": t} for t in texts[150:]])
    write_jsonl(raw / "web" / "fra" / "a.jsonl", [{"text": "un"}, {"text": "deux"}])
    write_jsonl(raw / "web" / "deu" / "a.jsonl", [{"text": "zwei"}])  # u(zwei) = 0.44 >= 0.1
    tokenize(raw, tmp_path / "mds", tokenizer_dir, heldout_fraction=0.1)
    manifest = load_manifest(tmp_path / "mds")["sources"]["web"]
    eng = tmp_path / "mds" / "web" / "eng"
    train, heldout = _docs(eng, hf_tokenizer), _docs(eng / "heldout", hf_tokenizer)
    expected_heldout = {t for t in texts if tmp_mod_u(t) < 0.1}
    assert set(heldout) == expected_heldout and 10 <= len(heldout) <= 60
    assert not set(train) & set(heldout)
    assert sorted(train + heldout) == sorted(texts)
    assert manifest["eng"]["heldout_documents"] == len(heldout)
    assert manifest["eng"]["documents"] == 300
    # two documents -> exactly one held out (the smaller hash), the other one trains
    fra_held = _docs(tmp_path / "mds" / "web" / "fra" / "heldout", hf_tokenizer)
    assert fra_held == [min(["un", "deux"], key=tmp_mod_u)]
    fra_train = samples(tmp_path / "mds" / "web" / "fra")
    assert len(fra_train) == 1
    assert manifest["fra"] == {
        "documents": 2, "heldout_documents": 1, "samples": 1, "skipped": 0, "tokens": len(fra_train[0])
    }  # fmt: skip
    # one document -> nothing held out, no heldout folder
    assert manifest["deu"]["heldout_documents"] == 0
    assert not (tmp_path / "mds" / "web" / "deu" / "heldout").exists()
    # same split on a second run into another folder
    tokenize(raw, tmp_path / "mds2", tokenizer_dir, heldout_fraction=0.1)
    assert _docs(tmp_path / "mds2" / "web" / "eng" / "heldout", hf_tokenizer) == heldout


def tmp_mod_u(text: str) -> float:
    return tokmod.heldout_u(text.encode("utf-8"))


def test_faulty_records_are_skipped_and_counted_exactly(tmp_path, tokenizer_dir, capsys):
    lang = tmp_path / "raw" / "web" / "eng"
    lang.mkdir(parents=True)
    lines = [
        b'{"text": "a good document"}',
        b'{"text": "broken json',  # invalid JSON
        b'{"text": "bad \xff\xfe utf8"}',  # invalid UTF-8
        b'{"body": "no text field"}',  # missing field
        b'{"text": ""}',  # empty
        b'{"text": "  \\n\\t "}',  # whitespace only
        b'{"text": 42}',  # not a string
        b'["not", "an", "object"]',
        b'{"text": "lone \\ud800 surrogate"}',
        b"",  # blank line: not a record at all
        b'{"text": "another good one"}',
    ]
    (lang / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (lang / "b.txt").write_bytes(b"text file with \xc3\x28 invalid byte")
    (lang / "c.txt").write_text("   \n")
    with gzip.open(lang / "d.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write('{"text": "gz doc"}\n{"text": null}\n')
    code = prep_main(
        ["tokenize", "--input", str(tmp_path / "raw"), "--output", str(tmp_path / "mds"),
         "--tokenizer", str(tokenizer_dir), "--workers", "1", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    counts = load_manifest(tmp_path / "mds")["sources"]["web"]["eng"]
    assert counts["documents"] == 3
    assert counts["skipped"] == 8 + 2 + 1
    captured = capsys.readouterr()
    err = captured.err
    assert "tokenized 1 group(s) (0 already done): 3 documents" in captured.out
    assert "11 skipped records" in captured.out
    assert "web/eng: skipped 11 record(s)" in err
    assert f"{lang / 'a.jsonl'}:2: invalid JSON" in err
    assert f"{lang / 'a.jsonl'}:3: invalid UTF-8" in err
    assert f"{lang / 'a.jsonl'}:4: missing text field 'text'" in err
    done = json.loads((tmp_path / "mds" / "web" / "eng" / "done.json").read_text())
    reasons = done["skipped_examples"]
    assert any(
        r.endswith(":9: text is not valid Unicode (surrogates not allowed at character 5)") for r in reasons
    )
    assert f"{lang / 'b.txt'}: invalid UTF-8 at byte 15" in reasons


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda raw: (raw / "web" / "english").mkdir(parents=True), "language folder 'english'"),
        (lambda raw: (raw / "web" / "Eng").mkdir(parents=True), "language folder 'Eng'"),
        (lambda raw: (raw / "web" / "rus_cyrl").mkdir(parents=True), "language folder 'rus_cyrl'"),
        (lambda raw: write_jsonl(raw / "web" / "eng" / "notes.csv", ["a,b"]), "notes.csv: unknown file type"),
        (
            lambda raw: (raw / "web" / "eng" / "x.jsonl.gz").write_bytes(b"not gzip"),
            "x.jsonl.gz: cannot read",
        ),
        (lambda raw: (raw / "web" / "eng" / "y.parquet").write_bytes(b"PAR1 junk"), "y.parquet: cannot read"),
    ],
)
def test_bad_layout_or_unreadable_file_is_a_clear_error(tmp_path, tokenizer_dir, capsys, setup, message):
    raw = tmp_path / "raw"
    write_jsonl(raw / "web" / "eng" / "ok.jsonl", [{"text": "fine"}])
    setup(raw)
    argv = [
        "tokenize",
        "--input",
        str(raw),
        "--output",
        str(tmp_path / "mds"),
        "--tokenizer",
        str(tokenizer_dir),
    ]
    assert prep_main(argv + ["--no-progress", "--workers", "1"]) == 2
    assert message in capsys.readouterr().err
    assert not (
        tmp_path / "mds" / "web" / "eng"
    ).exists()  # nothing a later step could take for finished output


def test_language_names_accepted():
    from mmbert_train.data.languages import base_language, check_language

    for name in ("eng", "nah", "daf", "code", "rus_Cyrl", "cmn_Hani", "code_Zzzz"):
        assert check_language(name) == name
    assert base_language("rus_Cyrl") == "rus"
    with pytest.raises(LanguageNameError, match="'en'"):
        check_language("en")


def test_parquet_and_zstd_inputs(tmp_path, tokenizer_dir, hf_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    lang = tmp_path / "raw" / "web" / "eng"
    lang.mkdir(parents=True)
    pq.write_table(
        pa.table({"content": ["first parquet doc", None, "second parquet doc"]}), lang / "a.parquet"
    )
    data = b'{"content": "zstd doc"}\n'
    (lang / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    tokenize(tmp_path / "raw", tmp_path / "mds", tokenizer_dir, text_field="content", heldout_fraction=0.0)
    assert _docs(tmp_path / "mds" / "web" / "eng", hf_tokenizer) == [
        "first parquet doc",
        "second parquet doc",
        "zstd doc",
    ]
    assert load_manifest(tmp_path / "mds")["sources"]["web"]["eng"]["skipped"] == 1
    # a parquet file without the text column is an error naming file and columns
    with pytest.raises(RawInputError, match=r"a.parquet: no column 'text' \(columns: content\)"):
        tokenize(tmp_path / "raw", tmp_path / "mds_err", tokenizer_dir)


def test_rerun_after_success_does_nothing(tmp_path, tokenizer_dir):
    raw = make_raw_corpus(tmp_path / "raw")
    tokenize(raw, tmp_path / "mds", tokenizer_dir)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "mds" / "web").rglob("*")}
    summary = tokenize(raw, tmp_path / "mds", tokenizer_dir)
    assert summary.groups_done == 0 and summary.groups_skipped == len(SAMPLE_TEXTS)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "mds" / "web").rglob("*")} == before
    assert load_manifest(tmp_path / "mds") == summary.manifest
    with pytest.raises(tokmod.PrepError, match="already tokenized with --max-seq-len 8192, not 128; refused"):
        tokenize(raw, tmp_path / "mds", tokenizer_dir, max_seq_len=128)


def test_interrupted_run_leaves_no_finished_looking_output_and_resumes(tmp_path, tokenizer_dir, monkeypatch):
    raw = make_raw_corpus(tmp_path / "raw", repeat=3)
    for language in ("eng", "arb"):  # several parts in a group
        write_jsonl(
            raw / "web" / language / "second.jsonl", [{"text": f"extra {language} {i}"} for i in range(5)]
        )
    tokenize(raw, tmp_path / "ref", tokenizer_dir, max_seq_len=12, heldout_fraction=0.3)

    real = tokmod.tokenize_part
    calls = []

    def crash_on_fourth(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 4:
            # a half-written part, as kill -9 would leave it
            Path(args[3]).with_name(f".{Path(args[3]).name}.tmp-999").mkdir(parents=True)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tokmod, "tokenize_part", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        tokenize(raw, tmp_path / "mds", tokenizer_dir, max_seq_len=12, heldout_fraction=0.3)
    monkeypatch.setattr(tokmod, "tokenize_part", real)
    manifest = load_manifest(tmp_path / "mds")
    finished = {lang for lang in manifest["sources"].get("web", {})}
    unfinished = set(SAMPLE_TEXTS) - finished
    assert unfinished, "the crash should leave some group unfinished"
    for language in unfinished:  # no folder a loader would read as a dataset
        assert not (tmp_path / "mds" / "web" / language).exists()
    summary = tokenize(raw, tmp_path / "mds", tokenizer_dir, max_seq_len=12, heldout_fraction=0.3)
    assert summary.groups_skipped == len(finished)
    assert load_manifest(tmp_path / "mds") == load_manifest(tmp_path / "ref")
    for language in SAMPLE_TEXTS:
        ref, got = tmp_path / "ref" / "web" / language, tmp_path / "mds" / "web" / language
        assert {k: v for k, v in shard_bytes(got).items() if k != "done.json"} == {
            k: v for k, v in shard_bytes(ref).items() if k != "done.json"
        }
    assert not list((tmp_path / "mds" / "web").glob(".*"))  # staging cleaned up


def test_workers_2_matches_workers_1(tmp_path, tokenizer_dir):
    raw = make_raw_corpus(tmp_path / "raw", repeat=2)
    for i in range(3):
        write_jsonl(
            raw / "web" / "eng" / f"more{i}.jsonl", [{"text": f"file {i} doc {j} " * 3} for j in range(20)]
        )
    tokenize(raw, tmp_path / "w1", tokenizer_dir, max_seq_len=10, workers=1)
    summary = tokenize(raw, tmp_path / "w2", tokenizer_dir, max_seq_len=10, workers=2)
    assert summary.groups_done == len(SAMPLE_TEXTS)
    assert load_manifest(tmp_path / "w1") == load_manifest(tmp_path / "w2")
    for language in SAMPLE_TEXTS:
        for sub in ("", "heldout"):
            a, b = tmp_path / "w1" / "web" / language / sub, tmp_path / "w2" / "web" / language / sub
            if (a / "index.json").exists() or (b / "index.json").exists():
                assert samples(a) == samples(b)


def test_hf_dataset_local_folder_matches_raw_input(tmp_path, tokenizer_dir):
    docs = [{"text": f"{t} [{i}]"} for i, t in enumerate(SAMPLE_TEXTS["eng"] * 3)]
    write_jsonl(tmp_path / "hf" / "data.jsonl", docs)
    write_jsonl(tmp_path / "raw" / "mysrc" / "eng" / "data.jsonl", docs)
    code = prep_main(
        ["tokenize", "--hf-dataset", str(tmp_path / "hf"), "--source", "mysrc", "--language", "eng",
         "--output", str(tmp_path / "mds"), "--tokenizer", str(tokenizer_dir), "--no-progress",
         "--heldout-fraction", "0.2"]
    )  # fmt: skip
    assert code == 0
    tokenize(tmp_path / "raw", tmp_path / "ref", tokenizer_dir, heldout_fraction=0.2)
    assert load_manifest(tmp_path / "mds")["sources"] == load_manifest(tmp_path / "ref")["sources"]
    assert samples(tmp_path / "mds" / "mysrc" / "eng") == samples(tmp_path / "ref" / "mysrc" / "eng")
    assert samples(tmp_path / "mds" / "mysrc" / "eng" / "heldout") == samples(
        tmp_path / "ref" / "mysrc" / "eng" / "heldout"
    )


def test_split_into_samples_loses_nothing():
    ids = np.arange(10, 33, dtype=np.uint32)
    for max_len in (3, 4, 7, 25, 26, 100):
        out = tokmod.split_into_samples(ids, max_len, BOS, EOS)
        assert all(s.dtype == np.uint32 and len(s) <= max_len and s[0] == BOS and s[-1] == EOS for s in out)
        assert np.concatenate([s[1:-1] for s in out]).tolist() == ids.tolist()
        assert len(out) == math.ceil(len(ids) / (max_len - 2))


def test_mds_column_is_uint32_ndarray(tmp_path, tokenizer_dir):
    raw = make_raw_corpus(tmp_path / "raw")
    tokenize(raw, tmp_path / "mds", tokenizer_dir)
    index = json.loads((tmp_path / "mds" / "web" / "eng" / "index.json").read_text())
    for shard in index["shards"]:
        assert shard["column_names"] == ["input_ids"]
        assert shard["column_encodings"] == ["ndarray:uint32"]
        assert shard["compression"] == "zstd"
        assert (tmp_path / "mds" / "web" / "eng" / shard["zip_data"]["basename"]).exists()
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    ds = StreamingDataset(local=str(tmp_path / "mds" / "web" / "eng"), shuffle=False, batch_size=1)
    first = ds[0]["input_ids"]
    assert first.dtype == np.uint32 and first[0] == BOS and first[-1] == EOS
    assert ds.num_samples == load_manifest(tmp_path / "mds")["sources"]["web"]["eng"]["samples"]


def test_hf_dataset_saved_to_disk_and_parquet_shards(tmp_path, tokenizer_dir, hf_tokenizer):
    import datasets

    texts = [f"saved doc {i}" for i in range(6)]
    datasets.Dataset.from_list([{"body": t} for t in texts]).save_to_disk(str(tmp_path / "saved"))
    spec = tokmod.HFSpec(str(tmp_path / "saved"), None, "train")
    with pytest.raises(tokmod.PrepError, match=r"has no column 'text' \(columns: body\); set --text-field"):
        tokmod.plan_hf(spec, "saved", "eng")
    with pytest.raises(tokmod.PrepError, match="cannot open the Hugging Face dataset .*missing"):
        tokmod.plan_hf(tokmod.HFSpec(str(tmp_path / "missing"), None, "train"), "saved", "eng")
    plans = tokmod.plan_hf(spec, "saved", "eng", text_field="body")
    run_tokenize(
        plans, tmp_path / "mds", str(tokenizer_dir), text_field="body", heldout_fraction=0.0, progress=False
    )
    assert _docs(tmp_path / "mds" / "saved" / "eng", hf_tokenizer) == texts

    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "pq").mkdir()
    for i in range(3):  # three files -> three dataset shards -> three parts, merged in order
        pq.write_table(pa.table({"text": texts[2 * i : 2 * i + 2]}), tmp_path / "pq" / f"train-{i}.parquet")
    plans = tokmod.plan_hf(tokmod.HFSpec(str(tmp_path / "pq"), None, "train"), "pq", "eng")
    assert len(plans[0].parts) == 3
    run_tokenize(plans, tmp_path / "mds", str(tokenizer_dir), workers=2, heldout_fraction=0.0, progress=False)
    assert _docs(tmp_path / "mds" / "pq" / "eng", hf_tokenizer) == texts
    with pytest.raises(LanguageNameError):
        tokmod.plan_hf(tokmod.HFSpec(str(tmp_path / "pq"), None, "train"), "pq", "english")


@pytest.mark.slow
def test_kill_9_midway_then_rerun_gives_the_same_shards(tmp_path, tokenizer_dir):
    import os
    import signal
    import subprocess
    import sys
    import time

    raw = tmp_path / "raw"
    for g in range(12):
        for f in range(2):
            docs = [
                {"text": f"group {g} file {f} document {d} " + "lorem ipsum dolor " * 40} for d in range(1500)
            ]
            write_jsonl(raw / "web" / f"l{chr(97 + g)}x" / f"{f}.jsonl", docs)
    argv = [
        "tokenize",
        "--input",
        str(raw),
        "--tokenizer",
        str(tokenizer_dir),
        "--workers",
        "2",
        "--no-progress",
    ]
    code = "import sys; from data_prep.cli import main; sys.exit(main(sys.argv[1:]))"
    env = dict(os.environ, PYTHONPATH=pythonpath_with(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-c", code, *argv, "--output", str(tmp_path / "mds")], env=env,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((tmp_path / "mds" / "web").glob("*/done.json"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: the main process and its workers
    proc.wait()
    finished = {p.parent.name for p in (tmp_path / "mds" / "web").glob("*/done.json")}
    assert 3 <= len(finished) < 12, "kill landed outside the run; make the corpus bigger"
    visible = {p.name for p in (tmp_path / "mds" / "web").iterdir() if not p.name.startswith(".")}
    assert visible == finished  # every visible folder is a finished one
    assert prep_main([*argv, "--output", str(tmp_path / "mds")]) == 0
    assert prep_main([*argv, "--output", str(tmp_path / "ref")]) == 0
    assert load_manifest(tmp_path / "mds") == load_manifest(tmp_path / "ref")
    for lang in (tmp_path / "ref" / "web").iterdir():
        got = shard_bytes(tmp_path / "mds" / "web" / lang.name)
        ref = shard_bytes(lang)
        assert {k: v for k, v in got.items() if k != "done.json"} == {
            k: v for k, v in ref.items() if k != "done.json"
        }


def test_merge_interrupted_halfway_is_redone(tmp_path, tokenizer_dir, monkeypatch):
    raw = make_raw_corpus(tmp_path / "raw", repeat=3)
    write_jsonl(raw / "web" / "eng" / "second.jsonl", [{"text": f"extra {i}"} for i in range(5)])
    tokenize(raw, tmp_path / "ref", tokenizer_dir, max_seq_len=12, heldout_fraction=0.3)
    real = tokmod._write_index

    def crash(folder, shards):
        if folder.parent.parent.name == ".eng.partial":  # eng's merge, after its shards were put in place
            raise KeyboardInterrupt
        return real(folder, shards)

    monkeypatch.setattr(tokmod, "_write_index", crash)
    with pytest.raises(KeyboardInterrupt):
        tokenize(raw, tmp_path / "mds", tokenizer_dir, max_seq_len=12, heldout_fraction=0.3, workers=1)
    monkeypatch.setattr(tokmod, "_write_index", real)
    assert not (tmp_path / "mds" / "web" / "eng").exists()
    assert (tmp_path / "mds" / "web" / ".eng.partial" / "out").exists()
    tokenize(raw, tmp_path / "mds", tokenizer_dir, max_seq_len=12, heldout_fraction=0.3)
    assert load_manifest(tmp_path / "mds") == load_manifest(tmp_path / "ref")
    got, ref = shard_bytes(tmp_path / "mds" / "web" / "eng"), shard_bytes(tmp_path / "ref" / "web" / "eng")
    assert {k: v for k, v in got.items() if k != "done.json"} == {
        k: v for k, v in ref.items() if k != "done.json"
    }
    # a staging folder left next to a finished group (killed after the commit rename) is cleaned up by a rerun
    (tmp_path / "mds" / "web" / ".arb.partial" / "parts").mkdir(parents=True)
    tokenize(raw, tmp_path / "mds", tokenizer_dir, max_seq_len=12, heldout_fraction=0.3)
    assert not list((tmp_path / "mds" / "web").glob(".*"))
