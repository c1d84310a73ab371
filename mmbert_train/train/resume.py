"""Autoresume that never loses work and never continues a different run: the save folder before Composer sees it.

A phase's ``trainer.save_folder`` holds Composer checkpoints ``ep<E>-ba<B>-rank0.pt``, the symlink
``latest-rank0.pt`` to the newest one and the resolved ``recipe.yaml``. Before the trainer is built:

1. :func:`repair_save_folder` opens every checkpoint file (a ``torch.save`` file is a zip archive whose central
   directory is written last, so a file cut by a kill has none, or a damaged ``data.pkl``; a sharded checkpoint
   folder is whole when its ``.metadata``, written last, reads back and covers existing shards): incomplete ones are
   moved to ``incomplete/`` (kept, never deleted, but out of Composer's way: Composer refuses to start next to a
   checkpoint "from the future"), and ``latest-rank0.pt`` is pointed at the newest complete checkpoint (it may
   be missing, dangling, or point at a cut file after a kill during a save). :func:`install_atomic_checkpoint_writes`
   makes new checkpoints appear only complete (written to a temporary name, then renamed).
2. :func:`compare_recipes` decides what a relaunch may change. The saved recipe describes the running state of
   the checkpoint; the new recipe may change what applies to that state as it is: the phase's length, logging,
   checkpoint cadence, evaluation, the schedule (a function of time) and the optimizer's ``lr``, ``max_lr`` and
   ``weight_decay``, which :func:`apply_optimizer_changes` writes into the loaded param groups and the LR
   scheduler's base values (Composer multiplies those by the schedule). Any other change (model, data mixture,
   batch size, seeds, ...) is refused, naming every key, before the saved recipe is overwritten.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^ep(\d+)-ba(\d+)-rank(\d+)\.pt$")
# Composer's sharded (torch.distributed.checkpoint) checkpoints: one folder per save, ``.metadata`` written last
SHARDED_CHECKPOINT_RE = re.compile(r"^ep(\d+)-ba(\d+)$")
DCP_METADATA = ".metadata"
INCOMPLETE_DIR = "incomplete"
TMP_PREFIX = ".tmp-"

# keys a relaunch may change, each applying to the running state as it is (prefixes end with ".")
FOLLOWED_ON_RESUME = (
    "trainer.max_duration",
    "trainer.save_interval",
    "trainer.save_num_checkpoints_to_keep",
    "trainer.save_overwrite",
    "trainer.autoresume",
    "trainer.progress_bar",
    "trainer.log_interval",
    "trainer.log_to_console",
    "trainer.allow_nonfinite_loss",
    "trainer.device_microbatch_size",  # the loss is token-weighted over microbatches: same update
    "trainer.compile",
    "scheduler.",  # a function of time: the new one applies from the next batch
    "eval.",
    "logging.",
    "data.eval.",
    "data.num_workers",
    "data.root",  # the same data in another place (a copy, a cache)
    "data.remote",
    "data.cache",  # where normalized indexes of published sources are kept
    "tokenizer",
    "description",
)
APPLIED_ON_RESUME = ("optimizer.lr", "optimizer.max_lr", "optimizer.weight_decay")


class ResumeError(ValueError):
    """A relaunch cannot continue the save folder's checkpoint; the message names the keys and what to do."""


# ---------------------------------------------------------------------------------------------- checkpoints


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a whole ``torch.save`` file: the zip's central directory (written last) is there and
    the pickle record reads back with a matching CRC. A file cut at any byte fails one of the two."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
            if not pickles:
                return False
            archive.read(pickles[0])  # checks the CRC of the record
            return True
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError):
        return False


def is_complete_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a whole torch.distributed.checkpoint folder: its ``.metadata`` (written after every
    rank's shards) reads back, and every byte range it records lies inside an existing shard file. A save killed
    before the metadata, or a shard cut short, fails."""
    path = Path(path)
    if not (path / DCP_METADATA).is_file():
        return False
    try:
        import torch.distributed.checkpoint as dcp

        storage = dcp.FileSystemReader(str(path)).read_metadata().storage_data or {}
    except Exception:  # noqa: BLE001 (a cut or corrupt .metadata fails in many ways)
        return False
    sizes: dict[str, int] = {}
    for info in storage.values():
        name = str(info.relative_path)
        if name not in sizes:
            shard = path / name
            sizes[name] = shard.stat().st_size if shard.is_file() else -1
        if sizes[name] < info.offset + info.length:
            return False
    return bool(storage)


@dataclass
class SaveFolderState:
    """What :func:`repair_save_folder` found: the checkpoint to resume from, and what it set aside."""

    resume_from: Path | None = None
    batch: int = 0
    set_aside: list[Path] = field(default_factory=list)
    relinked: bool = False


def _set_aside(folder: Path, path: Path) -> Path:
    target_dir = folder / INCOMPLETE_DIR
    target_dir.mkdir(exist_ok=True)
    target = target_dir / path.name
    n = 1
    while target.exists():
        target = target_dir / f"{path.name}.{n}"
        n += 1
    os.replace(path, target)
    return target


def _remove_dead_temporaries(folder: Path) -> None:
    """Temporary checkpoint files (``.tmp-PID-NAME``) of processes that are gone: a write that never finished."""
    from mmbert_train.processes import pid_alive

    for path in folder.glob(f"{TMP_PREFIX}*"):
        match = re.match(rf"^{re.escape(TMP_PREFIX)}(\d+)-", path.name)
        if match and not pid_alive(int(match.group(1))):
            log.warning("removing %s: a checkpoint write of process %s that was killed", path, match.group(1))
            path.unlink(missing_ok=True)


def repair_save_folder(folder: str | os.PathLike, rank: int = 0) -> SaveFolderState:
    """Set aside incomplete checkpoints of ``rank`` and point ``latest-rank<rank>.pt`` at the newest complete one.

    Whole-file checkpoints (``ep*-ba*-rank*.pt``) and, for rank 0, sharded ones (``ep*-ba*/`` folders of
    torch.distributed.checkpoint shards, which every rank reads through the same ``latest-rank0.pt`` link)."""
    folder = Path(folder)
    state = SaveFolderState()
    if not folder.is_dir():
        return state
    _remove_dead_temporaries(folder)
    complete: list[tuple[int, Path]] = []
    for path in sorted(folder.iterdir()):
        if path.is_symlink():
            continue
        match = CHECKPOINT_RE.match(path.name)
        sharded = SHARDED_CHECKPOINT_RE.match(path.name)
        if match is not None and int(match.group(3)) == rank and path.is_file():
            batch, complete_now = int(match.group(2)), is_complete_checkpoint(path)
        elif sharded is not None and rank == 0 and path.is_dir():
            batch, complete_now = int(sharded.group(2)), is_complete_sharded_checkpoint(path)
        else:
            continue
        if complete_now:
            complete.append((batch, path))
        else:
            size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.iterdir())
            target = _set_aside(folder, path)
            state.set_aside.append(target)
            log.warning(
                "%s is incomplete (%d bytes: a save that was interrupted); moved it to %s and resume from the "
                "newest complete checkpoint",
                path,
                size,
                target,
            )
    latest = folder / f"latest-rank{rank}.pt"
    if not complete:
        if latest.is_symlink() or latest.exists():
            log.warning(
                "%s points at no complete checkpoint; removing it (the run starts from step 0)", latest
            )
            latest.unlink()
        return state
    state.batch, newest = max(complete)
    state.resume_from = newest
    current = os.readlink(latest) if latest.is_symlink() else None
    if current is None or (folder / current).resolve() != newest.resolve():
        tmp = folder / f"{TMP_PREFIX}{os.getpid()}-{latest.name}"
        tmp.unlink(missing_ok=True)
        os.symlink(newest.name, tmp)
        os.replace(tmp, latest)  # a reader sees the old link or the new one, never none
        state.relinked = True
        before = f"pointed at {current}" if current is not None else "was missing"
        log.warning("%s %s; it now points at %s, the newest complete checkpoint", latest, before, newest.name)
    return state


_ATOMIC_WRITES_INSTALLED = False


def install_atomic_checkpoint_writes() -> None:
    """Make Composer write each checkpoint file to ``.tmp-PID-NAME`` in the same folder, fsync it and rename it:
    a kill during a save leaves the old checkpoints and a temporary file (removed by the next run), never a cut
    ``ep*-ba*-rank0.pt``. Wraps Composer's private ``_write_checkpoint_file`` (Composer 0.32), so
    :func:`repair_save_folder` stays the guarantee when a Composer version writes differently."""
    global _ATOMIC_WRITES_INSTALLED
    if _ATOMIC_WRITES_INSTALLED:
        return
    from composer.utils import checkpoint as composer_checkpoint

    original = getattr(composer_checkpoint, "_write_checkpoint_file", None)
    if original is None:
        log.warning("Composer has no _write_checkpoint_file; checkpoints are written in place")
        return

    def write_then_rename(state_dict: dict[str, Any], filename: str) -> None:
        path = Path(filename)
        # the temporary name keeps the file's suffixes: Composer picks tar / compression from them
        tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")
        try:
            original(state_dict, str(tmp))
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    composer_checkpoint._write_checkpoint_file = write_then_rename
    _ATOMIC_WRITES_INSTALLED = True


# ---------------------------------------------------------------------------------------------------- recipes


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


@dataclass
class RecipeChanges:
    """Keys whose value differs between the saved and the new recipe, sorted by what a resume does with them."""

    applied: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # written into the optimizer state
    followed: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # take effect as they are
    refused: dict[str, tuple[Any, Any]] = field(default_factory=dict)


def compare_recipes(saved_yaml: str, new_yaml: str) -> RecipeChanges:
    """Sort the differences of two resolved recipes (``recipe_to_yaml`` output). Keys only one side has (a
    recipe saved by an older version) are not compared."""
    saved, new = _flatten(yaml.safe_load(saved_yaml) or {}), _flatten(yaml.safe_load(new_yaml) or {})
    changes = RecipeChanges()
    for key in sorted(saved.keys() & new.keys()):
        before, after = saved[key], new[key]
        if before == after:
            continue
        if _matches(key, APPLIED_ON_RESUME):
            changes.applied[key] = (before, after)
        elif _matches(key, FOLLOWED_ON_RESUME):
            changes.followed[key] = (before, after)
        else:
            changes.refused[key] = (before, after)
    return changes


def _show(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key} {before!r} -> {after!r}" for key, (before, after) in changes.items())


def check_resume(saved_recipe: Path, new_yaml: str, checkpoint: Path, batch: int) -> RecipeChanges:
    """Compare the save folder's recipe with the new one; raise `ResumeError` for changes a resume cannot apply."""
    changes = compare_recipes(saved_recipe.read_text(encoding="utf-8"), new_yaml)
    if changes.refused:
        raise ResumeError(
            f"{saved_recipe.parent} holds a run at batch {batch} ({checkpoint.name}) whose recipe differs from "
            f"this one in keys a resume cannot apply to its running state: {_show(changes.refused)}. "
            "To continue that run, restore those values (see "
            f"{saved_recipe}); to start a new phase from it, use a new trainer.save_folder and "
            f"init_from.path={checkpoint.parent / 'latest-rank0.pt'}."
        )
    if changes.followed:
        log.info("resuming %s at batch %d with: %s", checkpoint.name, batch, _show(changes.followed))
    return changes


def apply_optimizer_changes(state: Any, old: Any, new: Any) -> list[str]:
    """Write the new recipe's ``optimizer.lr`` / ``max_lr`` / ``weight_decay`` into a resumed trainer's state.

    ``old`` / ``new``: the saved and the new `OptimizerConfig`. In every param group the current LR is scaled by
    ``new.lr / old.lr`` (it already holds the schedule's multiplier of the last batch), ``initial_lr`` becomes
    ``new.lr``, ``max_lr`` (StableAdamW's decoupled decay, ``w * (1 - weight_decay * lr_t / max_lr)``) the new
    max_lr (default lr), and groups that decay get the new weight decay (the no-decay group keeps 0). Each LR
    scheduler's ``base_lrs`` become ``new.lr``: Composer's schedule multiplies them from the next batch on.
    Returns one line per change, for the log."""
    lines: list[str] = []
    ratio = new.lr / old.lr
    old_max = old.max_lr if old.max_lr is not None else old.lr
    new_max = new.max_lr if new.max_lr is not None else new.lr
    for optimizer in state.optimizers:
        for i, group in enumerate(optimizer.param_groups):
            if new.lr != old.lr:
                group["lr"] = group["lr"] * ratio
                if "initial_lr" in group:
                    group["initial_lr"] = new.lr
            if "max_lr" in group and new_max != old_max:
                group["max_lr"] = new_max
            if new.weight_decay != old.weight_decay and group.get("weight_decay", 0.0) != 0.0:
                group["weight_decay"] = new.weight_decay
            lines.append(
                f"param group {i}: lr {group['lr']:.6g} (peak {new.lr:.6g}), weight_decay "
                f"{group.get('weight_decay', 0.0):.6g}, max_lr {group.get('max_lr', new_max):.6g}"
            )
    for scheduler in state.schedulers:
        if hasattr(scheduler, "base_lrs") and new.lr != old.lr:
            scheduler.base_lrs = [base * ratio for base in scheduler.base_lrs]
            if hasattr(scheduler, "_last_lr"):
                scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]
    return lines
