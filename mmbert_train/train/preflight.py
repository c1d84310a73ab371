"""Checks of a recipe against the files it names, before any model is built or any batch trained.

`mmbert_train.config.load_recipe` checks a recipe on its own (types, ranges, consistency across sections).
:func:`check_recipe_files` adds what needs the disk but not the data itself, so that `mmbert config` and the first
seconds of `mmbert train` report it, instead of the first held-out evaluation after a phase has trained:

* every language set resolves: ``data.languages``, ``data.eval.languages`` and each ``data.eval.groups`` entry
  (a missing language file or an id that is not a language is named with its key);
* when the data root holds its ``manifest.json``: the tokenizer it was made with (or the recipe's
  ``tokenizer``) has no more ids than ``model.vocab_size``, so no token id of the data is out of the embedding.

`mmbert train` also runs :func:`check_shards` (it stats every shard of the data root once): a missing or cut
shard is named here instead of failing mid-run inside Streaming.

No Composer import here: `mmbert config` stays fast.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mmbert_train.config import Recipe
from mmbert_train.schema import ConfigError

log = logging.getLogger(__name__)


def check_language_sets(recipe: Recipe, where: str = "recipe") -> None:
    from mmbert_train.data.languages import LanguageSetError, resolve_language_set

    data = recipe.data
    specs: list[tuple[str, object]] = (
        [("data.languages", data.languages)] if data.languages is not None else []
    )
    if data.eval.languages is not None:
        specs.append(("data.eval.languages", data.eval.languages))
    specs.extend((f"data.eval.groups.{name}", spec) for name, spec in data.eval.groups.items())
    for key, spec in specs:
        try:
            resolve_language_set(spec, where=key)  # type: ignore[arg-type]
        except LanguageSetError as err:
            raise ConfigError(f"{where}: {key}: {err}") from None


def tokenizer_vocab_size(tokenizer: str | Path) -> int | None:
    """The number of ids of a tokenizer directory (or ``tokenizer.json``) on disk; None when it is not there
    (e.g. a Hugging Face hub id: not looked up)."""
    path = Path(tokenizer)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file() or file.suffix != ".json":
        return None
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(file)).get_vocab_size()
    except Exception as err:  # noqa: BLE001 (an unreadable tokenizer is reported by the step that uses it)
        log.debug("cannot read tokenizer %s: %s", file, err)
        return None


def check_vocab(recipe: Recipe, where: str = "recipe") -> None:
    """``model.vocab_size`` >= the ids of the tokenizer the data was made with (the manifest names it)."""
    if recipe.model.preset is None and recipe.model.vocab_size is None:
        return  # the architecture comes from init_from's checkpoint
    vocab = recipe.model_config.vocab_size
    manifest_path = Path(recipe.data.root) / "manifest.json"
    candidates: list[tuple[str, str]] = []
    if manifest_path.is_file():
        try:
            tokenizer = json.loads(manifest_path.read_text(encoding="utf-8")).get("tokenizer")
        except (OSError, ValueError, AttributeError):
            tokenizer = None  # the data check of the run names a broken manifest
        if isinstance(tokenizer, str) and tokenizer:
            candidates.append((f"the tokenizer {tokenizer} of the data ({manifest_path})", tokenizer))
    if recipe.tokenizer:
        candidates.append((f"tokenizer {recipe.tokenizer}", recipe.tokenizer))
    for what, tokenizer in candidates:
        size = tokenizer_vocab_size(tokenizer)
        if size is not None and size > vocab:
            raise ConfigError(
                f"{where}: model.vocab_size {vocab} is smaller than {what}, which has {size} ids: token ids "
                f"{vocab}..{size - 1} of the data would be out of the embedding; set model.vocab_size >= {size}"
            )


def check_shards(root: str | Path, where: str = "recipe") -> int:
    """Every shard an ``index.json`` under ``root`` lists is there at its recorded size; returns the number of
    shards checked. A shard counts as present when its compressed file (``zip_data``) or its decompressed copy
    (``raw_data``, which Streaming writes next to it on first read) has the size the index records; a
    decompressed copy of the wrong size (a read that was killed) is an error too, as Streaming would trust it."""
    root = Path(root)
    checked = 0
    for index in sorted(root.rglob("index.json")):
        try:
            shards = json.loads(index.read_text(encoding="utf-8"))["shards"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{where}: data.root: {index} is not a readable MDS index ({err})") from None
        for shard in shards:
            raw, packed = shard.get("raw_data") or {}, shard.get("zip_data") or {}
            found = []
            for info in (raw, packed):
                if info.get("basename"):
                    path = index.parent / info["basename"]
                    found.append((path, info.get("bytes"), path.stat().st_size if path.is_file() else None))
            present = [(path, want, size) for path, want, size in found if size is not None]
            if not present:
                names = " or ".join(str(path) for path, _, _ in found)
                raise ConfigError(
                    f"{where}: data.root: shard {names} listed in {index} is missing; re-run `mmbert prep "
                    "tokenize` for that language (finished work is kept) or restore the file"
                )
            for path, want, size in present:
                if want is not None and size != want:
                    raise ConfigError(
                        f"{where}: data.root: shard {path} has {size} bytes, {index} records {want}: the file is "
                        "truncated or replaced; delete it and re-run `mmbert prep tokenize` (a decompressed "
                        "`.mds` copy next to a good `.zstd` may simply be deleted)"
                    )
            checked += 1
    return checked


def check_recipe_files(recipe: Recipe, where: str = "recipe") -> None:
    """All checks of this module; raises `ConfigError` naming the key."""
    check_language_sets(recipe, where)
    check_vocab(recipe, where)
