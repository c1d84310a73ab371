"""`mmbert prep` under faults and bad input: truncated or empty files, changed settings, a wrong text field,
concurrent runs, killed workers and parents, leftovers of dead runs, very long documents."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_prep import pieces
from data_prep.cli import main as prep_main
from data_prep.readers import RawInputError, read_documents
from data_prep.stats import rebuild_manifest
from data_prep.testing import make_raw_corpus, make_tokenizer, write_jsonl
from data_prep.tokenize import PrepError, plan_raw, run_tokenize
from data_prep.tokenizer import load_tokenizer, tokenizer_fingerprint
from mmbert_train.data.manifest import load_manifest
from mmbert_train.data.mds import iter_input_ids
from mmbert_train.locks import LOCK_NAME, LockHeldError, exclusive_lock
from mmbert_train.processes import pid_alive, pythonpath_with

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=pythonpath_with(ROOT))
CLI = "import sys; from data_prep.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer")


def tokenize(raw, out, tok, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("log", lambda _: None)
    return run_tokenize(plan_raw(raw), out, str(tok), **kw)


def cli(raw, out, tok, *extra) -> list[str]:
    return ["tokenize", "--input", str(raw), "--output", str(out), "--tokenizer", str(tok), "--no-progress",
            "--workers", "1", *extra]  # fmt: skip


def shard_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of a finished group except done.json (which records the inputs' paths and times)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "done.json"
    }


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------------------------------------------
# Truncated and empty compressed files


def _zst(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


def _lines(n: int) -> bytes:
    """JSON lines of ~500 bytes that compress poorly (hex digests), so n of them span many zstd blocks."""
    import hashlib

    return b"".join(
        b'{"text": "line %d %s"}\n' % (i, hashlib.sha512(b"%d" % i).hexdigest().encode() * 4)
        for i in range(n)
    )


@pytest.mark.parametrize(
    "name, blob",
    [
        ("big.jsonl.zst", _zst(_lines(800))[: len(_zst(_lines(800))) // 2]),  # 450 kB cut in the middle
        ("small.jsonl.zst", _zst(b'{"text": "hello"}\n')[:12]),  # a small one cut in half
        ("multi.jsonl.zst", _zst(_lines(100)) + _zst(_lines(100))[:-3]),  # the second frame cut short
        ("cut.jsonl.gz", gzip.compress(_lines(800))[:-100]),
    ],
)
def test_truncated_compressed_file_is_an_error_naming_it(tmp_path, tokenizer_dir, capsys, name, blob):
    raw = tmp_path / "raw"
    write_jsonl(raw / "web" / "fra" / "ok.jsonl", [{"text": "bien"}])
    (raw / "web" / "eng").mkdir(parents=True)
    (raw / "web" / "eng" / name).write_bytes(blob)
    assert prep_main(cli(raw, tmp_path / "mds", tokenizer_dir)) == 2
    err = capsys.readouterr().err
    assert f"error: {raw / 'web' / 'eng' / name}: this {name[name.index('.') :]} file is truncated" in err
    assert "Traceback" not in err
    assert not (tmp_path / "mds" / "web" / "eng").exists()  # nothing a loader could take for finished output


def test_complete_multi_frame_zst_reads_every_frame(tmp_path):
    from data_prep.readers import read_documents

    path = tmp_path / "a.jsonl.zst"
    path.write_bytes(_zst(_lines(800)) + _zst(b'{"text": "last"}\n'))
    texts = [text for _, text, _ in read_documents(path)]
    assert len(texts) == 801 and texts[-1] == "last" and texts[799].startswith("line 799 ")


def test_empty_files_warn_by_name(tmp_path, tokenizer_dir, capsys):
    raw = tmp_path / "raw"
    write_jsonl(raw / "web" / "eng" / "a.jsonl", [{"text": "one document"}])
    for name in ("b.jsonl.gz", "c.jsonl.zst", "d.jsonl"):
        (raw / "web" / "eng" / name).write_bytes(b"")
    assert prep_main(cli(raw, tmp_path / "mds", tokenizer_dir)) == 0
    err = capsys.readouterr().err
    folder = raw / "web" / "eng"
    assert f"warning: web/eng: {folder / 'b.jsonl.gz'}: empty compressed file (0 bytes)" in err
    assert f"warning: web/eng: {folder / 'c.jsonl.zst'}: empty compressed file (0 bytes)" in err
    assert f"warning: web/eng: {folder / 'd.jsonl'}: empty file (0 bytes)" in err
    done = json.loads((tmp_path / "mds" / "web" / "eng" / "done.json").read_text())
    assert len(done["warnings"]) == 3 and done["counts"]["documents"] == 1


# ----------------------------------------------------------------------------------------------------------------
# Settings that change the output


def test_tokenizer_replaced_at_the_same_path_is_refused(tmp_path, tokenizer_dir):
    tok = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, tok)
    first, second = tmp_path / "raw1", tmp_path / "raw2"
    write_jsonl(first / "web" / "eng" / "a.jsonl", [{"text": "english text"}])
    write_jsonl(second / "web" / "fra" / "a.jsonl", [{"text": "texte français"}])
    tokenize(first, tmp_path / "mds", tok)
    fingerprint = load_manifest(tmp_path / "mds")["tokenizer_fingerprint"]
    assert fingerprint == tokenizer_fingerprint(
        load_tokenizer(str(tokenizer_dir))
    )  # a copy: same fingerprint
    assert fingerprint["vocab_size"] == 600
    assert fingerprint["special_ids"] == {"pad": 0, "eos": 1, "bos": 2, "unk": 3, "mask": 4}
    shutil.rmtree(tok)
    make_tokenizer(tok, vocab_size=700)  # another vocabulary under the same path
    with pytest.raises(PrepError) as info:
        tokenize(second, tmp_path / "mds", tok)
    message = str(info.value)
    assert (
        f"{tmp_path / 'mds' / 'web' / 'eng'}: already tokenized with a tokenizer of vocab size 600" in message
    )
    assert "not one of vocab size 700" in message and "(same name, other files)" in message
    assert not (tmp_path / "mds" / "web" / "fra").exists()
    # the same vocabulary size with two ids swapped is caught by the hash
    shutil.rmtree(tok)
    shutil.copytree(tokenizer_dir, tok)
    spec = json.loads((tok / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    a, b = [token for token, i in vocab.items() if i in (400, 401)]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (tok / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(PrepError, match="vocab size 600, sha256 [0-9a-f]{12}, not one of vocab size 600"):
        tokenize(second, tmp_path / "mds", tok)


def test_changed_heldout_fraction_is_refused(tmp_path, tokenizer_dir):
    raw1, raw2 = tmp_path / "raw1", tmp_path / "raw2"
    write_jsonl(raw1 / "web" / "eng" / "a.jsonl", [{"text": "english text"}])
    write_jsonl(raw2 / "web" / "fra" / "a.jsonl", [{"text": "texte"}])
    tokenize(raw1, tmp_path / "mds", tokenizer_dir, heldout_fraction=0.005)
    with pytest.raises(
        PrepError, match=r"web/eng: already tokenized with --heldout-fraction 0.005, not 0.1; refused"
    ):
        tokenize(raw2, tmp_path / "mds", tokenizer_dir, heldout_fraction=0.1)
    tokenize(raw2, tmp_path / "mds", tokenizer_dir, heldout_fraction=0.005)  # the recorded value is fine
    assert set(load_manifest(tmp_path / "mds")["sources"]["web"]) == {"eng", "fra"}


def test_changed_text_field_is_refused_for_a_finished_group_only(tmp_path, tokenizer_dir):
    raw = tmp_path / "raw"
    write_jsonl(raw / "web" / "eng" / "a.jsonl", [{"text": "t", "content": "c"}])
    tokenize(raw, tmp_path / "mds", tokenizer_dir)
    with pytest.raises(PrepError) as info:
        tokenize(raw, tmp_path / "mds", tokenizer_dir, text_field="content")
    assert str(info.value).startswith(
        f"{tmp_path / 'mds' / 'web' / 'eng'}: already tokenized with --text-field 'text', not 'content'; "
        f"refused: delete {tmp_path / 'mds' / 'web' / 'eng'} to redo it"
    )
    # another source with another field goes into the same output
    write_jsonl(tmp_path / "code" / "starcoder" / "code" / "a.jsonl", [{"content": "def f(): pass"}])
    tokenize(tmp_path / "code", tmp_path / "mds", tokenizer_dir, text_field="content")
    assert set(load_manifest(tmp_path / "mds")["sources"]) == {"starcoder", "web"}


def test_text_field_matching_nothing_is_an_error_not_an_empty_group(tmp_path, tokenizer_dir, capsys):
    raw = tmp_path / "raw"
    write_jsonl(raw / "web" / "eng" / "a.jsonl", [{"text": f"doc {i}", "id": i} for i in range(5)])
    assert prep_main(cli(raw, tmp_path / "mds", tokenizer_dir, "--text-field", "nope")) == 2
    err = capsys.readouterr().err
    assert (
        f"error: {raw / 'web' / 'eng' / 'a.jsonl'}: none of its 5 JSON records has the text field 'nope' "
        "(the first one has 'text', 'id'); set --text-field"
    ) in err
    assert not (tmp_path / "mds" / "web" / "eng").exists()
    assert prep_main(cli(raw, tmp_path / "mds", tokenizer_dir)) == 0  # the right field: nothing to undo first
    assert load_manifest(tmp_path / "mds")["sources"]["web"]["eng"]["documents"] == 5
    with pytest.raises(RawInputError, match="none of its 5 JSON records has the text field 'nope'"):
        list(read_documents(raw / "web" / "eng" / "a.jsonl", "nope"))


def test_streamed_dataset_whose_rows_lack_the_text_field_is_an_error(monkeypatch):
    from data_prep import tokenize as tokmod

    # a streamed dataset that does not announce its columns: the rows themselves are checked
    monkeypatch.setattr(tokmod, "_load_hf", lambda spec: [{"body": "a", "id": 1}, {"body": "b", "id": 2}])
    part = tokmod.PartInput(hf=tokmod.HFSpec("org/data", "cfg", "train"))
    with pytest.raises(PrepError) as info:
        list(tokmod._read_hf(part, "text"))
    assert str(info.value) == (
        "org/data[cfg:train] shard 0/1: none of its 2 rows has the text field 'text' (the first one has 'body', "
        "'id'); set --text-field"
    )


def test_group_without_any_document_warns(tmp_path, tokenizer_dir, capsys):
    raw = tmp_path / "raw"
    write_jsonl(raw / "web" / "eng" / "a.jsonl", [{"text": ""}, {"text": "   "}])
    assert prep_main(cli(raw, tmp_path / "mds", tokenizer_dir)) == 0
    assert (
        "warning: web/eng: no documents at all (2 skipped record(s)); finished empty"
        in capsys.readouterr().err
    )


def test_stats_keeps_the_fingerprint_of_our_own_output(tmp_path, tokenizer_dir):
    tokenize(make_raw_corpus(tmp_path / "raw"), tmp_path / "mds", tokenizer_dir)
    written = load_manifest(tmp_path / "mds")
    assert "tokenizer_fingerprint" in written
    assert rebuild_manifest(tmp_path / "mds") == written


# ----------------------------------------------------------------------------------------------------------------
# One run per output folder


def test_second_run_into_a_locked_output_is_refused(tmp_path, tokenizer_dir, capsys):
    raw = make_raw_corpus(tmp_path / "raw")
    with exclusive_lock(tmp_path / "mds" / LOCK_NAME, command="mmbert prep tokenize"):
        assert prep_main(cli(raw, tmp_path / "mds", tokenizer_dir)) == 2
        err = capsys.readouterr().err
        assert (
            f"error: {tmp_path / 'mds'} is in use: the lock {tmp_path / 'mds' / LOCK_NAME} is held by " in err
        )
        assert f"PID {os.getpid()} on host {socket.gethostname()} (mmbert prep tokenize, since" in err
        with pytest.raises(LockHeldError):
            rebuild_manifest(tmp_path / "mds")  # stats writes the manifest too: same lock
    assert not list((tmp_path / "mds").glob("web/*"))


def test_lock_of_a_dead_run_is_taken_over(tmp_path, tokenizer_dir):
    raw = make_raw_corpus(tmp_path / "raw")
    (tmp_path / "mds").mkdir()
    pid = dead_pid()
    (tmp_path / "mds" / LOCK_NAME).write_text(
        json.dumps(
            {"pid": pid, "host": socket.gethostname(), "command": "mmbert prep tokenize", "since": "x"}
        )
    )
    notes = []
    tokenize(raw, tmp_path / "mds", tokenizer_dir, log=notes.append)
    assert any(f"took over the lock {tmp_path / 'mds' / LOCK_NAME} left by PID {pid}" in n for n in notes)
    assert not (tmp_path / "mds" / LOCK_NAME).exists()
    assert load_manifest(tmp_path / "mds")["sources"]["web"]


def test_train_tokenizer_removes_tmp_dirs_of_dead_runs(tmp_path):
    from data_prep.tokenizer import train_tokenizer

    raw = make_raw_corpus(tmp_path / "raw")
    stale = tmp_path / f".tok.tmp-{dead_pid()}"
    stale.mkdir()
    (stale / "tokenizer.json").write_text("{half")
    train_tokenizer(raw, tmp_path / "tok", 300)
    assert not stale.exists() and (tmp_path / "tok" / "tokenizer.json").exists()


# ----------------------------------------------------------------------------------------------------------------
# Long documents


def _variants(tokenizer_dir):
    """Our BPE, the same with Metaspace prepend_scheme='first' (the first word differs) and without any
    pre-tokenizer (merges may cross spaces): tokenizers where a window's edges do matter."""
    from tokenizers import Tokenizer

    base = json.loads(Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).to_str())
    first = json.loads(json.dumps(base))
    first["pre_tokenizer"]["prepend_scheme"] = "first"
    bare = json.loads(json.dumps(base))
    bare["pre_tokenizer"] = None
    return {name: Tokenizer.from_str(json.dumps(spec)) for name, spec in [("ours", base), ("first", first),
                                                                           ("bare", bare)]}  # fmt: skip


def test_encode_in_pieces_equals_encoding_whole(tokenizer_dir):
    import random

    rng = random.Random(0)
    alphabet = list("abcdefghij  \n\t") + ["é", "ж", "ا", "人", "😀", "▁", "<mask>", "  ", "\u0301"]
    text = "".join(rng.choice(alphabet) for _ in range(20_000))
    for name, tok in _variants(tokenizer_dir).items():
        tok.encode_special_tokens = True
        whole = tok.encode(text, add_special_tokens=False).ids
        got, unmatched = pieces.encode_in_pieces(tok, text, piece_chars=2000, overlap_chars=300)
        assert got.dtype == np.uint32 and got.tolist() == whole, name
        assert unmatched == 0, name


def test_long_document_in_the_pipeline_keeps_every_token(tmp_path, tokenizer_dir, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setattr(pieces, "PIECE_CHARS", 4096)
    words = ["All", "human", "beings", "Все", "люди", "人人", "😀", "\n", "rights."]
    doc = " ".join(words[(i * 7) % len(words)] for i in range(12_000))  # ~70k characters: 17 windows
    raw = tmp_path / "raw"
    write_jsonl(
        raw / "web" / "eng" / "a.jsonl", [{"text": "short one"}, {"text": doc}, {"text": "short two"}]
    )
    tokenize(raw, tmp_path / "mds", tokenizer_dir, max_seq_len=512, heldout_fraction=0.0)
    reference = AutoTokenizer.from_pretrained(str(tokenizer_dir)).backend_tokenizer
    reference.encode_special_tokens = True
    expected = [reference.encode(t, add_special_tokens=False).ids for t in ("short one", doc, "short two")]
    got = [ids[1:-1].tolist() for ids in iter_input_ids(tmp_path / "mds" / "web" / "eng")]
    assert got[0] == expected[0] and got[-1] == expected[2]
    assert [t for sample in got[1:-1] for t in sample] == expected[1]
    done = json.loads((tmp_path / "mds" / "web" / "eng" / "done.json").read_text())
    assert (done["long_documents"], done["unmatched_joins"]) == (1, 0)


MEASURE = """
import json, resource, sys
from data_prep.cli import main
rc = main(["tokenize", "--input", sys.argv[1], "--output", sys.argv[2], "--tokenizer", sys.argv[3],
           "--workers", "1", "--no-progress", "--max-seq-len", "1024"])
print(json.dumps({"rc": rc, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


@pytest.mark.slow
def test_memory_of_a_single_large_document_is_bounded(tmp_path, tokenizer_dir):
    """Peak RSS of a `prep tokenize` process on one 4 MB document, minus the same on a tiny one, stays below
    40x the document's size (measured 15x; encoding it whole took ~110x: ~270 bytes of tokenizer bookkeeping
    per token)."""
    import random

    rng = random.Random(0)
    words = "All human beings are born free and equal Все люди рождаются свободными 人人生而自由 😀".split()
    big = " ".join(rng.choice(words) for _ in range(600_000))
    peaks = {}
    for name, text in [("tiny", "a tiny document"), ("big", big)]:
        raw = tmp_path / name / "raw"
        write_jsonl(raw / "web" / "eng" / "a.jsonl", [{"text": text}])
        out = subprocess.run(
            [sys.executable, "-c", MEASURE, str(raw), str(tmp_path / name / "mds"), str(tokenizer_dir)],
            env=ENV, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        report = json.loads(out.stdout.strip().splitlines()[-1])
        assert report["rc"] == 0, out.stderr
        peaks[name] = report["maxrss_kb"] * 1024
    size = (tmp_path / "big" / "raw" / "web" / "eng" / "a.jsonl").stat().st_size
    assert size > 4_000_000
    manifest = load_manifest(tmp_path / "big" / "mds")["sources"]["web"]["eng"]
    assert manifest["documents"] == 1 and manifest["tokens"] > size / 10
    growth = peaks["big"] - peaks["tiny"]
    assert growth < 40 * size, f"peak grew by {growth / size:.0f}x the document's size"


# ----------------------------------------------------------------------------------------------------------------
# Killed processes (slow: real subprocesses, a corpus big enough to be caught mid-run)


@pytest.fixture(scope="module")
def busy_corpus(tmp_path_factory, tokenizer_dir):
    """A raw corpus of 2 groups x 6 files that takes a worker a few seconds, and its reference output."""
    root = tmp_path_factory.mktemp("busy")
    for language in ("eng", "fra"):
        for f in range(6):
            docs = [
                {"text": f"{language} file {f} document {d} " + "lorem ipsum dolor " * 60} for d in range(700)
            ]
            write_jsonl(root / "raw" / "web" / language / f"{f}.jsonl", docs)
    tokenize(root / "raw", root / "ref", tokenizer_dir, workers=1)
    return root


def _start(busy_corpus, out: Path, tokenizer_dir) -> subprocess.Popen:
    argv = cli(busy_corpus / "raw", out, tokenizer_dir)
    argv[argv.index("--workers") + 1] = "2"
    return subprocess.Popen([sys.executable, "-c", CLI, *argv], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip


def _wait_for_worker(out: Path, proc: subprocess.Popen, timeout: float = 120) -> int:
    """The pid of a worker that is writing a part (from the part's temporary folder name)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for tmp in out.glob("web/.*.partial/parts/.*.tmp-*"):
            pid = int(tmp.name.rsplit("-", 1)[1])
            if pid != proc.pid:
                return pid
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("no worker started")


@contextlib.contextmanager
def _running(busy_corpus, out: Path, tokenizer_dir):
    """A 2-worker run of the busy corpus into ``out`` (its own process group), with the pid of a worker once one
    is writing a part; on the way out, whatever is left of the run's process group is killed."""
    proc = _start(busy_corpus, out, tokenizer_dir)
    try:
        yield proc, _wait_for_worker(out, proc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _same_as_reference(busy_corpus, out: Path) -> None:
    assert load_manifest(out)["sources"] == load_manifest(busy_corpus / "ref")["sources"]
    for language in ("eng", "fra"):
        assert shard_bytes(out / "web" / language) == shard_bytes(busy_corpus / "ref" / "web" / language)
    assert not list((out / "web").glob(".*")) and not (out / LOCK_NAME).exists()


@pytest.mark.slow
def test_kill_9_of_a_worker_is_a_clear_error_and_the_rerun_finishes(tmp_path, busy_corpus, tokenizer_dir):
    out = tmp_path / "mds"
    with _running(busy_corpus, out, tokenizer_dir) as (proc, worker):
        time.sleep(0.5)  # let it report which file it is on
        os.kill(worker, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert (
        f"error: worker process {worker} was killed by signal 9 (SIGKILL: kill -9, or the out-of-memory"
        in err
    )
    assert f"while tokenizing {busy_corpus / 'raw' / 'web'}" in err
    assert "rerun the same command to continue" in err
    assert "Traceback" not in err and "BrokenProcessPool" not in err
    assert prep_main(cli(busy_corpus / "raw", out, tokenizer_dir)) == 0
    _same_as_reference(busy_corpus, out)


@pytest.mark.slow
def test_kill_9_of_the_parent_takes_its_workers_along(tmp_path, busy_corpus, tokenizer_dir, capsys):
    import psutil

    out = tmp_path / "mds"
    with _running(busy_corpus, out, tokenizer_dir) as (proc, _):
        workers = [p.pid for p in psutil.Process(proc.pid).children()]
        assert len(workers) >= 2
        os.kill(proc.pid, signal.SIGKILL)  # the main process only, not its process group
        proc.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(map(pid_alive, workers)):
            time.sleep(0.05)
        assert not any(map(pid_alive, workers)), "workers outlived the killed main process"
    assert (out / LOCK_NAME).exists()  # what the dead run left: its lock file and half-written parts
    notes = []
    tokenize(busy_corpus / "raw", out, tokenizer_dir, log=notes.append)
    assert any(f"left by PID {proc.pid}" in n and "no longer running" in n for n in notes)
    _same_as_reference(busy_corpus, out)


@pytest.mark.slow
def test_two_concurrent_runs_the_second_is_refused(tmp_path, busy_corpus, tokenizer_dir, capsys):
    out = tmp_path / "mds"
    with _running(busy_corpus, out, tokenizer_dir) as (proc, _):
        assert prep_main(cli(busy_corpus / "raw", out, tokenizer_dir)) == 2
        err = capsys.readouterr().err
        assert f"{out} is in use: the lock {out / LOCK_NAME} is held by PID {proc.pid} on host" in err
        assert proc.poll() is None  # the first run goes on, undisturbed
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    _same_as_reference(busy_corpus, out)
