"""Language folder names: ``<iso639-3>`` or ``code``, optionally with a FineWeb2 script suffix (``rus_Cyrl``)."""

from __future__ import annotations

import re

# Three lowercase letters as the published per-language lists use them (ISO 639-3, retired and collective codes
# included: we check the form, not membership, so `nah` or `daf` pass), or `code`; then an optional
# ISO 15924 script suffix as FineWeb2 writes it (`_Cyrl`, `_Latn`, `_Hani`).
LANGUAGE_PATTERN = re.compile(r"^(?:[a-z]{3}|code)(?:_[A-Z][a-z]{3})?$")


class LanguageNameError(ValueError):
    """A folder or argument that should name a language has another form."""


def check_language(name: str, where: str = "") -> str:
    """Return ``name`` if it is a valid language id, else raise :class:`LanguageNameError` naming ``where``."""
    if not LANGUAGE_PATTERN.match(name):
        place = f" ({where})" if where else ""
        raise LanguageNameError(
            f"language folder {name!r}{place} is not a language id: expected a three-letter lowercase "
            "ISO 639-3 code or 'code', optionally with a script suffix, e.g. 'rus', 'rus_Cyrl', 'code'"
        )
    return name


def base_language(name: str) -> str:
    """The language a folder counts toward when sampling by language: ``rus_Cyrl`` -> ``rus``."""
    return check_language(name).split("_", 1)[0]
