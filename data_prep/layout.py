"""The raw corpus layout ``RAW/<source>/<language>/<files>`` and its discovery."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data_prep.readers import RawInputError, file_kind
from mmbert_train.data.languages import check_language


@dataclass(frozen=True)
class RawGroup:
    """One (source, language) folder of raw files, files in sorted order (the order documents are written in)."""

    source: str
    language: str
    files: tuple[Path, ...]

    @property
    def key(self) -> str:
        return f"{self.source}/{self.language}"


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def discover_groups(raw_dir: str | Path) -> list[RawGroup]:
    """All (source, language) groups under ``raw_dir``, sorted; clear errors for anything off-layout.

    Hidden entries (names starting with ``.``) are ignored. A language folder with a malformed name, a file
    with an unknown extension, or a file or folder where the layout has none is an error naming the path.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise RawInputError(f"{raw_dir}: no such input folder (expected RAW/<source>/<language>/<files>)")
    groups = []
    for source_dir in sorted(filter(_visible, raw_dir.iterdir())):
        if not source_dir.is_dir():
            raise RawInputError(
                f"{source_dir}: expected a source folder (RAW/<source>/<language>/), found a file"
            )
        for lang_dir in sorted(filter(_visible, source_dir.iterdir())):
            if not lang_dir.is_dir():
                raise RawInputError(
                    f"{lang_dir}: expected a language folder (RAW/<source>/<language>/), found a file"
                )
            check_language(lang_dir.name, str(lang_dir))
            files = []
            for path in sorted(filter(_visible, lang_dir.iterdir())):
                if path.is_dir():
                    raise RawInputError(f"{path}: unexpected folder; a language folder holds only data files")
                file_kind(path)
                files.append(path)
            groups.append(RawGroup(source_dir.name, lang_dir.name, tuple(files)))
    if not groups:
        raise RawInputError(f"{raw_dir}: no <source>/<language>/ folders found")
    return groups
