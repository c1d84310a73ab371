"""``MDS/manifest.json``: what a tokenized corpus holds, per (source, language).

Schema (Contract 2 in docs/architecture.md)::

    {"tokenizer": str, "max_seq_len": int,
     "tokenizer_fingerprint": {"sha256": str, "vocab_size": int, "special_ids": {role: int}},  # optional
     "sources": {source: {language: {"documents": int, "samples": int, "tokens": int,
                                     "skipped": int, "heldout_documents": int}}}}

``tokenizer_fingerprint`` identifies the tokenizer the ids were made with (written by ``mmbert prep tokenize``:
the sha256 of its canonical ``tokenizer.json``, its vocabulary size and special ids); manifests of foreign data
may lack it.

``documents`` counts every valid document, held-out ones included; ``samples`` and ``tokens`` count the training
dataset only (bos/eos included), ``heldout_documents`` the documents written to ``<language>/heldout/``;
``skipped`` counts records that were not documents (invalid JSON or UTF-8, missing field, empty text).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mmbert_train.data.languages import LanguageNameError, check_language
from mmbert_train.data.spec import DataValidationError

MANIFEST_NAME = "manifest.json"
COUNT_KEYS = ("documents", "samples", "tokens", "skipped", "heldout_documents")


class ManifestError(DataValidationError):
    """A manifest that is missing or does not follow the schema; the message names the file and the key."""


def empty_counts() -> dict[str, int]:
    return dict.fromkeys(COUNT_KEYS, 0)


def make_manifest(
    tokenizer: str,
    max_seq_len: int,
    sources: dict[str, dict[str, dict[str, int]]],
    tokenizer_fingerprint: dict | None = None,
) -> dict:
    """A manifest dict with sources and languages in sorted order (the fingerprint only when known)."""
    fingerprint = {"tokenizer_fingerprint": tokenizer_fingerprint} if tokenizer_fingerprint else {}
    return {
        "tokenizer": tokenizer,
        "max_seq_len": int(max_seq_len),
        **fingerprint,
        "sources": {
            source: {
                language: {k: int(counts[k]) for k in COUNT_KEYS}
                for language, counts in sorted(langs.items())
            }
            for source, langs in sorted(sources.items())
        },
    }


def check_manifest(manifest: Any, where: str = "manifest") -> dict:
    """Raise :class:`ManifestError` unless ``manifest`` follows the schema; return it unchanged."""

    def fail(key: str, expected: str, value: Any) -> None:
        raise ManifestError(f"{where}: {key} should be {expected}, got {value!r}")

    if not isinstance(manifest, dict):
        fail("the top level", "an object", type(manifest).__name__)
    for key in ("tokenizer", "max_seq_len", "sources"):
        if key not in manifest:
            raise ManifestError(f"{where}: missing key {key!r} (expected tokenizer, max_seq_len, sources)")
    if not isinstance(manifest["tokenizer"], str) or not manifest["tokenizer"]:
        fail("'tokenizer'", "a non-empty string", manifest["tokenizer"])
    max_len = manifest["max_seq_len"]
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 3:
        fail("'max_seq_len'", "an integer >= 3", max_len)
    if "tokenizer_fingerprint" in manifest:
        fp = manifest["tokenizer_fingerprint"]
        expected = "an object {sha256: str, vocab_size: int, special_ids: {role: int}}"
        if not (
            isinstance(fp, dict)
            and isinstance(fp.get("sha256"), str)
            and isinstance(fp.get("vocab_size"), int)
            and isinstance(fp.get("special_ids"), dict)
        ):
            fail("'tokenizer_fingerprint'", expected, fp)
    if not isinstance(manifest["sources"], dict):
        fail("'sources'", "an object {source: {language: counts}}", manifest["sources"])
    for source, languages in manifest["sources"].items():
        if not isinstance(languages, dict):
            fail(f"sources.{source}", "an object {language: counts}", languages)
        for language, counts in languages.items():
            key = f"sources.{source}.{language}"
            try:
                check_language(language)
            except LanguageNameError as exc:
                raise ManifestError(f"{where}: {key}: {exc}") from None
            if not isinstance(counts, dict):
                fail(key, "an object of counts", counts)
            missing = [k for k in COUNT_KEYS if k not in counts]
            if missing:
                raise ManifestError(f"{where}: {key} is missing {', '.join(missing)}")
            for k in COUNT_KEYS:
                value = counts[k]
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    fail(f"{key}.{k}", "a non-negative integer", value)
            if counts["heldout_documents"] > counts["documents"]:
                fail(
                    f"{key}.heldout_documents",
                    f"at most documents ({counts['documents']})",
                    counts["heldout_documents"],
                )
    return manifest


def load_manifest(path: str | os.PathLike) -> dict:
    """Read and check a manifest; ``path`` is the ``manifest.json`` file or the MDS folder that holds it (a path
    that is not a ``.json`` file counts as the folder)."""
    path = Path(path)
    if path.is_dir() or path.suffix != ".json":
        path = path / MANIFEST_NAME
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ManifestError(
            f"{path}: no manifest here; run `mmbert prep tokenize` or `mmbert prep stats`"
        ) from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    return check_manifest(manifest, str(path))
