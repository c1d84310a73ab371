"""Language ids and language sets.

Recipes name languages by ISO 639-3 code (``rus``, ``cmn``, ``eng``) plus ``code`` for source code, as the
published per-language counts do. Data folders may carry FineWeb2's script suffix (``rus_Cyrl``, ``cmn_Hani``);
such a folder keeps its full name on disk and in the manifest, and counts toward its language (``rus``) when a
phase samples by language: :func:`normalize_language`.

A phase's language set is either an inline list of ids or a file with one id per line (blank lines and ``#``
comments ignored), e.g. ``recipes/languages/phase1_pretrain.txt``: :func:`resolve_language_set`. A relative file
name is looked up in the recipe's folder, then in the working directory: :func:`find_language_file`.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

# Three lowercase letters (ISO 639-3 form; retired and collective codes pass: we check the form, not membership)
# or `code`, then an optional ISO 15924 script suffix as FineWeb2 writes it (`_Cyrl`, `_Latn`).
LANGUAGE_ID = re.compile(r"^(?:[a-z]{3}|code)(?:_[A-Z][a-z]{3})?$")


class LanguageSetError(ValueError):
    """A language id, language file or counts file is wrong; the message names the file, line or id."""


class LanguageNameError(LanguageSetError):
    """A data folder or argument that should name a language has another form."""


def check_language(name: str, where: str = "") -> str:
    """Return the folder name ``name`` unchanged if it is a language id, else raise :class:`LanguageNameError`."""
    if not isinstance(name, str) or not LANGUAGE_ID.match(name):
        place = f" ({where})" if where else ""
        raise LanguageNameError(
            f"language folder {name!r}{place} is not a language id: expected a three-letter lowercase "
            "ISO 639-3 code or 'code', optionally with a script suffix, e.g. 'rus', 'rus_Cyrl', 'code'"
        )
    return name


def base_language(name: str) -> str:
    """The language a folder counts toward when sampling by language: ``rus_Cyrl`` -> ``rus``."""
    return check_language(name).split("_", 1)[0]


def normalize_language(name: str, where: str = "") -> str:
    """The language a folder or id counts toward: ``rus_Cyrl`` -> ``rus``, ``code`` -> ``code``.

    Raises :class:`LanguageSetError` (naming ``where``) when ``name`` is not a language id.
    """
    if not isinstance(name, str) or not LANGUAGE_ID.match(name):
        place = f"{where}: " if where else ""
        raise LanguageSetError(
            f"{place}{name!r} is not a language id: expected a three-letter lowercase ISO 639-3 code or "
            "'code', optionally with a script suffix (e.g. 'rus', 'rus_Cyrl', 'code')"
        )
    return name.split("_", 1)[0]


def normalize_languages(names: Iterable[str], where: str = "") -> list[str]:
    """Normalize ids in order, rejecting ids that name the same language twice (``rus`` and ``rus_Cyrl``)."""
    seen: dict[str, str] = {}
    out = []
    for i, name in enumerate(names):
        base = normalize_language(name, f"{where}[{i}]" if where else "")
        if base in seen:
            raise LanguageSetError(
                f"{where + ': ' if where else ''}language {base!r} is listed twice ({seen[base]!r} and {name!r})"
            )
        seen[base] = name
        out.append(base)
    return out


def read_language_file(path: str | os.PathLike) -> list[str]:
    """Read a language-set file: one id per line; blank lines and ``#`` comments are ignored.

    Ids are normalized (``rus_Cyrl`` -> ``rus``); a bad or repeated id is an error naming ``file:line``.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise LanguageSetError(f"language file not found: {path}") from None
    seen: dict[str, int] = {}
    out = []
    for lineno, line in enumerate(lines, start=1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        base = normalize_language(name, f"{path}:{lineno}")
        if base in seen:
            raise LanguageSetError(f"{path}:{lineno}: language {base!r} already listed on line {seen[base]}")
        seen[base] = lineno
        out.append(base)
    if not out:
        raise LanguageSetError(f"{path}: the language file lists no language")
    return out


def find_language_file(name: str | os.PathLike, recipe_dir: str | os.PathLike | None = None) -> Path:
    """Locate a language file named in a recipe.

    A relative name is tried against, in order: the folder of the recipe file (``recipe_dir``, when known) and the
    working directory. The shipped recipes name theirs from the repository root
    (``recipes/languages/phase1_pretrain.txt``), so they are run from there; a recipe of your own can name a file
    next to it (``languages.txt``).
    """
    path = Path(name)
    if path.is_absolute():
        candidates = [path]
    else:
        bases = [Path(recipe_dir)] if recipe_dir is not None else []
        bases.append(Path.cwd())
        candidates = list(dict.fromkeys(base / path for base in bases))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise LanguageSetError(
        f"language file {str(name)!r} not found (tried {tried}); a relative path is resolved against the "
        "recipe's folder and the working directory (run the shipped recipes from the repository root)"
    )


def resolve_language_set(
    spec: Sequence[str] | str | os.PathLike, *, recipe_dir: str | os.PathLike | None = None, where: str = ""
) -> list[str]:
    """The phase's language set as normalized ids, from an inline list or a file (see :func:`find_language_file`)."""
    if isinstance(spec, (str, os.PathLike)):
        return read_language_file(find_language_file(spec, recipe_dir))
    languages = normalize_languages(spec, where or "data.languages")
    if not languages:
        raise LanguageSetError(f"{where or 'data.languages'}: the language set is empty")
    return languages


def read_counts_csv(path: str | os.PathLike, column: str) -> dict[str, int]:
    """Read one column of a per-language counts CSV (header ``language,<column>,...``), e.g. the published
    ``recipes/languages/language_counts.csv``. Ids are normalized; script-suffixed rows add to their language."""
    path = Path(path)
    try:
        f = open(path, encoding="utf-8", newline="")
    except FileNotFoundError:
        raise LanguageSetError(f"counts file not found: {path}") from None
    with f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if "language" not in header:
            raise LanguageSetError(f"{path}: expected a 'language' column in the header, got {header}")
        if column not in header:
            others = ", ".join(h for h in header if h != "language")
            raise LanguageSetError(f"{path}: no column {column!r}; the columns are: {others}")
        counts: dict[str, int] = {}
        for row in reader:
            where = f"{path}:{reader.line_num}"
            base = normalize_language(row["language"].strip(), where)
            raw = (row[column] or "").strip()
            try:
                value = int(float(raw)) if raw else 0
            except ValueError:
                raise LanguageSetError(
                    f"{where}: column {column!r} should be a token count, got {raw!r}"
                ) from None
            if value < 0:
                raise LanguageSetError(f"{where}: column {column!r} should be >= 0, got {value}")
            counts[base] = counts.get(base, 0) + value
    return counts
