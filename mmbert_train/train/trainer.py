"""Assemble a Composer `Trainer` from a recipe: model (new or `init_from`), data, optimizer, schedule, parallelism,
precision, checkpoints, loggers and callbacks.

`build_trainer(recipe)` does everything but ``fit``; `train(recipe)` also fits. Both run the same way in one process
(``python train.py RECIPE``) and under the Composer launcher (``composer -n 8 train.py RECIPE``), which sets the
rank / world-size environment Composer reads.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from composer import Trainer
from composer.callbacks import LRMonitor, SpeedMonitor
from composer.core import DataSpec, Evaluator
from composer.loggers import WandBLogger
from composer.utils import dist, reproducibility

from mmbert_train.atomic import atomic_write_text
from mmbert_train.config import Recipe, model_overrides, recipe_to_yaml
from mmbert_train.model import MMBertForMaskedLM, ModelConfig, compile_regions
from mmbert_train.model.attention import check_trainable, resolve_backend
from mmbert_train.train.callbacks import (
    BatchMetricsLogger,
    HeldoutEval,
    LoadOptimizerState,
    ModelConfigRecorder,
    NonFiniteLossGuard,
    SaveFolderLock,
)
from mmbert_train.train.composer_model import MMBertComposerModel
from mmbert_train.train.gloo_compat import enable_avg_reductions_on_gloo
from mmbert_train.train.optim import build_optimizer
from mmbert_train.train.schedulers import build_scheduler

log = logging.getLogger(__name__)

# architecture fields a checkpoint must share with the recipe's preset (the rest may be overridden per phase)
SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
RECIPE_FILENAME = "recipe.yaml"
LOCK_FILENAME = ".lock"


class TrainSetupError(ValueError):
    """The recipe cannot run here (device, launcher, checkpoint); the message says what to change."""


# ------------------------------------------------------------------------------------------- device, precision


def resolve_device(recipe: Recipe) -> str:
    device = recipe.trainer.device
    if device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if device == "gpu" and not torch.cuda.is_available():
        raise TrainSetupError("trainer.device is 'gpu' but CUDA is not available (set trainer.device=cpu)")
    return device


def resolve_precision(recipe: Recipe, device: str) -> str:
    precision = recipe.trainer.precision
    if precision == "auto":
        return "amp_bf16" if device == "gpu" else "fp32"
    if device == "cpu" and precision != "fp32":
        raise TrainSetupError(f"trainer.precision {precision!r} needs a GPU; on CPU use fp32 (or auto)")
    return precision


def parallelism_config(recipe: Recipe, device: str, world_size: int) -> dict[str, Any] | None:
    """Composer's ``parallelism_config``: None (single process or DDP, which Composer sets up by itself when
    several ranks run) or FSDP. On CPU only FSDP2 works, which Composer picks when ``FSDP_VERSION=2``."""
    mode = recipe.trainer.parallelism
    if mode in ("auto", "ddp") or world_size == 1:
        return None
    fsdp = recipe.trainer.fsdp
    if device == "cpu" and os.environ.get("FSDP_VERSION", "1") != "2":
        raise TrainSetupError(
            "trainer.parallelism=fsdp on CPU needs FSDP2: run with FSDP_VERSION=2 "
            "(FSDP1 needs CUDA), or use trainer.parallelism=ddp"
        )
    if device == "cpu":
        # FSDP2 on gloo: DTensor's "avg" reductions (StableAdamW's per-tensor RMS) need a SUM / n stand-in
        enable_avg_reductions_on_gloo()
    config: dict[str, Any] = {
        "sharding_strategy": fsdp.sharding_strategy,
        "state_dict_type": fsdp.state_dict_type,
        "mixed_precision": fsdp.mixed_precision,
        "activation_checkpointing": fsdp.activation_checkpointing,
    }
    if os.environ.get("FSDP_VERSION", "1") == "2":
        # FSDP2 has no sharding strategies or CPU offload knobs in Composer; FULL_SHARD is what it does
        config = {k: v for k, v in config.items() if k not in ("sharding_strategy",)}
    else:
        config["cpu_offload"] = fsdp.cpu_offload
    return {"fsdp": config}


# -------------------------------------------------------------------------------------------------- model


def build_model(recipe: Recipe) -> tuple[MMBertForMaskedLM, dict[str, Any] | None]:
    """A new model from the preset, or the ``init_from`` checkpoint's weights with the recipe's overrides
    (e.g. the new RoPE theta); also the checkpoint's optimizer state when the recipe asks for it."""
    init = recipe.init_from
    if init is None:
        reproducibility.seed_all(
            recipe.trainer.seed
        )  # the same initial weights on every rank and every rerun
        return MMBertForMaskedLM(recipe.model_config), None
    from mmbert_train.checkpoints import load_pretrained, optimizer_state_by_name

    path = Path(init.path)
    if not path.exists():
        raise TrainSetupError(
            f"init_from.path {init.path!r} does not exist (relative paths are relative to {Path.cwd()}); "
            "train the previous phase first or point it at a checkpoint"
        )
    model = load_pretrained(path, trust_pickle=init.trust_pickle, **model_overrides(recipe.model)).train()
    if recipe.model.preset is not None:
        expected = recipe.model_config
        differ = [f for f in SHAPE_FIELDS if getattr(model.config, f) != getattr(expected, f)]
        if differ:
            detail = ", ".join(f"{f}: {getattr(model.config, f)} vs {getattr(expected, f)}" for f in differ)
            raise TrainSetupError(
                f"init_from {init.path} does not match model.preset {recipe.model.preset!r} ({detail})"
            )
    optim_state = None
    if init.load_optimizer_state:
        optim_state = optimizer_state_by_name(path, init.trust_pickle)
        if optim_state is None:
            log.warning("init_from %s holds no optimizer state; the optimizer starts fresh", init.path)
    return model, optim_state


# --------------------------------------------------------------------------------------------------- data


def build_train_data(recipe: Recipe, model_config: ModelConfig) -> DataSpec:
    from mmbert_train.train.dataloader import build_train_dataloader

    return build_train_dataloader(
        recipe.data,
        global_batch_size=recipe.trainer.global_batch_size,
        vocab_size=model_config.vocab_size,
        device_microbatch_size=recipe.trainer.device_microbatch_size,
        phase_tokens=recipe.phase_tokens(),
        mask_token_id=model_config.mask_token_id,
        pad_id=model_config.pad_token_id,
    )


def heldout_callbacks(recipe: Recipe) -> list[Any]:
    """Held-out evaluation per language and group (``data.eval``) at a fixed mask ratio and seed."""
    if not recipe.eval.enabled:
        return []
    if all(s.kind == "published" for s in recipe.data.sources.values()):
        # no held-out split is published: evaluate with `mmbert eval-mlm` on held-out data of your own
        log.info("held-out eval off: every source is published and none has a held-out split")
        return []
    return [HeldoutEval(recipe.data, recipe.eval.interval)]


# ------------------------------------------------------------------------------------------------- loggers


def _wandb_reachable(timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection(("api.wandb.ai", 443), timeout=timeout):
            return True
    except OSError:
        return False


def build_loggers(recipe: Recipe) -> list:
    cfg = recipe.logging.wandb
    if not cfg.enabled:
        return []
    if importlib.util.find_spec("wandb") is None:  # e.g. a GPU image that carries only what the check needs
        raise RuntimeError(
            "logging.wandb.enabled is true but the wandb package is not installed: pip install wandb, or set "
            "logging.wandb.enabled=false"
        )
    mode = cfg.mode
    if mode == "auto":
        mode = "online" if _wandb_reachable() else "offline"
    os.environ["WANDB_MODE"] = mode
    return [WandBLogger(project=cfg.project, entity=cfg.entity, group=cfg.group)]


# ------------------------------------------------------------------------------------------------- trainer


def _save_recipe(recipe: Recipe, folder: str) -> None:
    """The resolved recipe next to the checkpoints (rank 0, written atomically)."""
    if dist.get_global_rank() != 0:
        return
    atomic_write_text(Path(folder) / RECIPE_FILENAME, recipe_to_yaml(recipe))


def _launcher_rank() -> int:
    """This process's global rank as the launcher set it (Composer's dist is not set up before the Trainer)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


# locks this process holds, by save folder: a new trainer on the same folder takes its predecessor's lock over
_HELD_LOCKS: dict[Path, SaveFolderLock] = {}


def _lock_save_folder(folder: Path) -> SaveFolderLock:
    """One `mmbert train` per save folder: a second run on the folder is refused, naming the holder; the lock of
    a run that died (``kill -9`` too) is taken over."""
    from mmbert_train.locks import FileLock

    key = folder.resolve()
    previous = _HELD_LOCKS.pop(key, None)
    if previous is not None:
        previous.release()  # this process built an earlier trainer on the folder: that one is abandoned
    lock = FileLock(folder / LOCK_FILENAME, command="mmbert train")
    taken_over = lock.acquire()
    if taken_over is not None:
        log.warning(
            "took over the lock of %s left by %s, which is no longer running", folder, taken_over.describe()
        )
    holder = SaveFolderLock(lock)
    _HELD_LOCKS[key] = holder
    return holder


@dataclass
class ResumePlan:
    """What a run found in its save folder before the trainer was built (see `mmbert_train.train.resume`)."""

    lock: SaveFolderLock | None = None
    saved_recipe: str | None = None  # the folder's recipe.yaml as it was before this run
    resume_from: Path | None = None  # rank 0: the newest complete checkpoint


def prepare_save_folder(recipe: Recipe) -> ResumePlan:
    """Lock the save folder, set aside incomplete checkpoints, point ``latest`` at the newest complete one, and
    refuse a relaunch whose recipe changes what a resume cannot apply (before the saved recipe is touched)."""
    from mmbert_train.train.resume import check_resume, install_atomic_checkpoint_writes, repair_save_folder

    plan = ResumePlan()
    cfg = recipe.trainer
    if cfg.save_folder is None:
        return plan
    install_atomic_checkpoint_writes()
    folder = Path(cfg.save_folder)
    saved = folder / RECIPE_FILENAME
    if _launcher_rank() != 0:
        plan.saved_recipe = saved.read_text(encoding="utf-8") if saved.is_file() else None
        return plan
    folder.mkdir(parents=True, exist_ok=True)
    plan.lock = _lock_save_folder(folder)
    try:
        found = repair_save_folder(folder)
        plan.resume_from = found.resume_from
        plan.saved_recipe = saved.read_text(encoding="utf-8") if saved.is_file() else None
        if found.resume_from is None:
            return plan
        if not cfg.autoresume and not cfg.save_overwrite:
            raise TrainSetupError(
                f"trainer.save_folder {folder} holds checkpoints up to batch {found.batch} and "
                "trainer.autoresume is false: set trainer.autoresume=true to continue them, "
                "trainer.save_overwrite=true to start over in this folder, or use another folder"
            )
        if cfg.autoresume:
            if plan.saved_recipe is None:
                log.warning(
                    "%s has checkpoints but no %s: cannot check that this recipe is the run being resumed",
                    folder,
                    RECIPE_FILENAME,
                )
            else:
                check_resume(saved, recipe_to_yaml(recipe), found.resume_from, found.batch)
    except BaseException:
        plan.lock.release()
        _HELD_LOCKS.pop(folder.resolve(), None)
        raise
    return plan


def apply_resumed_recipe(trainer: Trainer, recipe: Recipe, saved_recipe: str | None) -> None:
    """After Composer loaded the save folder's checkpoint: the new recipe's optimizer lr / max_lr / weight decay
    go into the loaded param groups and LR schedulers (the checkpoint carried the old ones)."""
    import yaml

    from mmbert_train.config import OptimizerConfig
    from mmbert_train.schema import from_dict
    from mmbert_train.train.resume import apply_optimizer_changes

    if saved_recipe is None or int(trainer.state.timestamp.batch) == 0:
        return
    old_section = (yaml.safe_load(saved_recipe) or {}).get("optimizer")
    if not isinstance(old_section, dict):
        return
    old = from_dict(
        OptimizerConfig, old_section, f"{recipe.trainer.save_folder}/{RECIPE_FILENAME}: optimizer"
    )
    new = recipe.optimizer
    if (old.lr, old.max_lr, old.weight_decay) == (new.lr, new.max_lr, new.weight_decay):
        return
    lines = apply_optimizer_changes(trainer.state, old, new)
    log.warning(
        "resumed at batch %d with a new optimizer setting (lr %g -> %g, weight_decay %g -> %g, max_lr %s -> %s): %s",
        int(trainer.state.timestamp.batch),
        old.lr,
        new.lr,
        old.weight_decay,
        new.weight_decay,
        old.max_lr,
        new.max_lr,
        "; ".join(lines),
    )


def build_trainer(
    recipe: Recipe,
    *,
    train_dataloader: DataSpec | None = None,
    eval_dataloader: Sequence[Evaluator] | None = None,
    callbacks: Sequence[Any] = (),
    loggers: Sequence[Any] | None = None,
    **trainer_kwargs: Any,
) -> Trainer:
    """The Composer `Trainer` for one phase. ``train_dataloader`` / ``eval_dataloader`` replace the recipe's
    data (tests use fixed, pre-packed batches); ``trainer_kwargs`` go to `Trainer` as they are."""
    from mmbert_train.train.preflight import check_recipe_files, check_shards

    check_recipe_files(recipe, recipe.name)
    from mmbert_train.config import check_microbatch_split

    check_microbatch_split(recipe, dist.get_world_size(), recipe.name)  # this run's ranks, launcher or not
    local_mds = all(
        s.kind != "published" and getattr(s, "path", None) is None for s in recipe.data.sources.values()
    )
    if train_dataloader is None and recipe.data.remote is None and local_mds:
        check_shards(
            recipe.data.root, recipe.name
        )  # our own MDS under data.root (published data is read as is)
    device = resolve_device(recipe)
    precision = resolve_precision(recipe, device)
    world_size = dist.get_world_size()
    plan = prepare_save_folder(recipe)
    try:
        return _build_trainer(
            recipe, plan, device, precision, world_size, train_dataloader, eval_dataloader, callbacks, loggers,
            trainer_kwargs,
        )  # fmt: skip
    except BaseException:
        if plan.lock is not None:
            plan.lock.release()
        raise


def _build_trainer(
    recipe: Recipe,
    plan: ResumePlan,
    device: str,
    precision: str,
    world_size: int,
    train_dataloader: DataSpec | None,
    eval_dataloader: Sequence[Evaluator] | None,
    callbacks: Sequence[Any],
    loggers: Sequence[Any] | None,
    trainer_kwargs: dict[str, Any],
) -> Trainer:
    model, optim_state = build_model(recipe)
    torch_device = torch.device("cuda" if device == "gpu" else device)
    check_trainable(resolve_backend(model.config.attn_backend, torch_device), torch_device)
    if recipe.trainer.compile:
        # Regional compile (layers, embeddings, head + loss), not Composer's whole-model compile; done before
        # Composer applies FSDP, whose hooks then run eagerly around the compiled forwards (docs/model.md).
        compile_regions(model)
    composer_model = MMBertComposerModel(model)
    optimizer = build_optimizer(composer_model, recipe.optimizer, on_cuda=device == "gpu")
    train_data = train_dataloader if train_dataloader is not None else build_train_data(recipe, model.config)
    evaluators = list(
        eval_dataloader or []
    )  # Composer evaluators a caller brings; held-out eval is a callback

    all_callbacks: list[Any] = [ModelConfigRecorder(model.config), LRMonitor(), SpeedMonitor(window_size=50)]
    if not recipe.trainer.allow_nonfinite_loss:
        all_callbacks.append(NonFiniteLossGuard())
    if plan.lock is not None:
        all_callbacks.append(plan.lock)
    if recipe.logging.packing_efficiency:
        all_callbacks.append(BatchMetricsLogger())
    if optim_state is not None:
        all_callbacks.append(LoadOptimizerState(optim_state))
    if train_dataloader is None:  # runs on the recipe's data score its held-out split
        all_callbacks.extend(heldout_callbacks(recipe))
    all_callbacks.extend(callbacks)

    trainer_cfg = recipe.trainer
    per_rank_batch = max(1, trainer_cfg.global_batch_size // world_size)
    kwargs: dict[str, Any] = dict(
        model=composer_model,
        train_dataloader=train_data,
        eval_dataloader=evaluators or None,
        eval_interval=recipe.eval.interval if evaluators else 1,
        max_duration=trainer_cfg.max_duration,
        optimizers=optimizer,
        schedulers=build_scheduler(recipe.scheduler),
        step_schedulers_every_batch=True,
        device=device,
        precision=precision,
        device_train_microbatch_size=trainer_cfg.device_microbatch_size or per_rank_batch,
        # token-weighted loss over microbatches and ranks (see composer_model.py)
        accumulate_train_batch_on_tokens=True,
        parallelism_config=parallelism_config(recipe, device, world_size),
        seed=trainer_cfg.seed,
        run_name=trainer_cfg.run_name or recipe.name,
        save_folder=trainer_cfg.save_folder,
        save_interval=trainer_cfg.save_interval,
        save_num_checkpoints_to_keep=trainer_cfg.save_num_checkpoints_to_keep,
        save_overwrite=trainer_cfg.save_overwrite,
        autoresume=trainer_cfg.autoresume,
        loggers=list(loggers) if loggers is not None else build_loggers(recipe),
        callbacks=all_callbacks,
        progress_bar=trainer_cfg.progress_bar,
        log_to_console=trainer_cfg.log_to_console,
        console_log_interval=trainer_cfg.log_interval,
    )
    kwargs.update(trainer_kwargs)
    trainer = Trainer(**kwargs)  # loads the save folder's newest complete checkpoint (autoresume)
    apply_resumed_recipe(trainer, recipe, plan.saved_recipe)
    if trainer_cfg.save_folder is not None:
        _save_recipe(recipe, trainer_cfg.save_folder)  # only now: the saved one described the checkpoint
    return trainer


def train(recipe: Recipe, **kwargs: Any) -> Trainer:
    """Build the trainer and run the phase to ``trainer.max_duration``; returns the fitted trainer."""
    trainer = build_trainer(recipe, **kwargs)
    try:
        trainer.fit()
    finally:
        for callback in trainer.state.callbacks:
            if isinstance(callback, SaveFolderLock):
                callback.release()
    return trainer
