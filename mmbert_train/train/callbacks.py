"""Composer callbacks of a training run: the model config in every checkpoint, loader metrics, and the optimizer
state carried over from the previous phase."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from composer.core import Callback, Event, State
from composer.loggers import Logger

from mmbert_train.model import ModelConfig

log = logging.getLogger(__name__)

# per-batch floats the loader puts next to the tensors (mmbert_train.data.loader.METRIC_KEYS)
BATCH_METRIC_KEYS = ("packing_efficiency", "mask_ratio")
# param-group entries that belong to the new phase's recipe when an optimizer state is carried over
HYPERPARAMETERS = (
    "lr",
    "initial_lr",
    "max_lr",
    "weight_decay",
    "beta1",
    "beta2",
    "betas",
    "eps",
    "decouple_lr",
)


class ModelConfigRecorder(Callback):
    """Stores the model's `ModelConfig` in every checkpoint (Contract 1):
    ``state['callbacks']['ModelConfigRecorder']['model_config']`` is a plain dict of its fields, which
    `mmbert_train.model.load_pretrained` reads to rebuild the model from our checkpoints."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config

    def state_dict(self) -> dict[str, Any]:
        return {"model_config": self.config.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("model_config")
        if saved is not None and saved != self.config.to_dict():
            changed = sorted(k for k in saved if saved.get(k) != self.config.to_dict().get(k))
            log.info(
                "resumed checkpoint was written with a different model config (%s); keeping the current one",
                changed,
            )


class BatchMetricsLogger(Callback):
    """Logs the loader's per-batch floats (``packing_efficiency``: real tokens / row capacity; ``mask_ratio``)
    as ``data/<name>``."""

    def after_dataloader(self, state: State, logger: Logger) -> None:
        batch = state.batch
        if not isinstance(batch, Mapping):
            return
        metrics = {f"data/{k}": float(batch[k]) for k in BATCH_METRIC_KEYS if k in batch}
        if metrics:
            logger.log_metrics(metrics)


class LoadOptimizerState(Callback):
    """Loads the previous phase's optimizer state (Adam moments) once, at the start of a fresh phase.

    ``optim_state`` is a full (unsharded) optimizer state dict keyed by parameter names of our model
    (``model.<HF key>`` under the Composer wrapper, as `torch.distributed.checkpoint.state_dict` names them); it is
    applied with ``set_optimizer_state_dict`` so the same code serves single-process, DDP and FSDP. Skipped when
    the run resumed from its own checkpoint (autoresume): that checkpoint's optimizer state is the right one.
    The param-group hyper-parameters (lr, weight decay, ...) stay those of the new recipe.
    """

    def __init__(self, optim_state: dict[str, Any]) -> None:
        self.optim_state = optim_state

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        if event != Event.FIT_START or self.optim_state is None:
            return
        if int(state.timestamp.batch) > 0:
            self.optim_state = None
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        optimizer = state.optimizers[0]
        groups = [dict(g) for g in optimizer.state_dict()["param_groups"]]
        saved = dict(self.optim_state)
        # keep the new phase's hyper-parameters; take the moments (and step counts) from the saved state
        saved_groups = saved.get("param_groups", [])
        merged_groups = []
        for i, group in enumerate(saved_groups):
            new = dict(group)
            current = groups[min(i, len(groups) - 1)]
            for key in HYPERPARAMETERS:  # the rest (step count, optimi's setup flags) is the saved state's
                if key in current:
                    new[key] = current[key]
            merged_groups.append(new)
        saved["param_groups"] = merged_groups
        set_optimizer_state_dict(
            state.model,
            optimizer,
            optim_state_dict=saved,
            options=StateDictOptions(full_state_dict=True, strict=False),
        )
        log.info("loaded the optimizer state of init_from (%d tensors' moments)", len(saved.get("state", {})))
        self.optim_state = None


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the batch."""


class NonFiniteLossGuard(Callback):
    """Stops training at the first NaN / infinite loss, right after the loss is computed and before the backward
    pass and the optimizer step: the weights stay those of the last good batch, and no checkpoint is written
    for the broken one. With several ranks the check is agreed on (any rank's bad loss stops every rank), so no
    rank waits in a collective for one that stopped. ``trainer.allow_nonfinite_loss`` turns this off."""

    def after_loss(self, state: State, logger: Logger) -> None:
        import torch
        from composer.utils import dist

        losses = state.loss if isinstance(state.loss, (tuple, list)) else [state.loss]
        tensors = [loss for loss in losses if isinstance(loss, torch.Tensor)]
        if not tensors:
            return
        bad = torch.tensor([0.0 if all(bool(torch.isfinite(t.detach()).all()) for t in tensors) else 1.0])
        if dist.get_world_size() > 1:
            device = tensors[0].device
            bad = bad.to(device)
            dist.all_reduce(bad, reduce_operation="MAX")
        if float(bad.item()) > 0:
            batch = int(state.timestamp.batch) + 1
            values = ", ".join(f"{float(t.detach().float().mean()):g}" for t in tensors)
            raise NonFiniteLossError(
                f"the training loss is not finite at batch {batch} (loss {values}); training stopped before "
                f"this batch's update, the last checkpoint is of an earlier batch. Usual causes: a too-high "
                "optimizer.lr, model.norm_eps <= 0, fp16 overflow. Set trainer.allow_nonfinite_loss=true to "
                "train on regardless"
            )


class SaveFolderLock(Callback):
    """Holds the save folder's lock (`mmbert_train.locks`) for the trainer's lifetime; released when the
    trainer closes (or when this process builds another trainer on the same folder)."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def post_close(self) -> None:
        self.release()


class HeldoutEval(Callback):
    """Held-out MLM loss and accuracy per language and per group, during training (``data.eval``).

    Scores ``root/<source>/<language>/heldout/`` with `mmbert_train.evaluation` at ONE fixed mask ratio and seed
    (the same masked tokens at every evaluation and in every phase), every ``interval`` and at the end of the
    phase. Logs ``eval/<language>/loss``, ``eval/<language>/accuracy`` and ``eval/group/<name>/{loss,accuracy}``
    (token-weighted over the group's languages). Languages without held-out documents are left out. Every rank
    scores the same (small) set, so FSDP's collectives line up; rank 0's logger writes it.
    """

    def __init__(self, data_cfg: Any, interval: str, batch_tokens: int | None = None) -> None:
        from composer.core import Time

        self.data_cfg = data_cfg
        self.interval = Time.from_timestring(interval)
        ev = data_cfg.eval
        # data.eval.batch_size sequences of the eval length per forward pass
        self.batch_tokens = batch_tokens or ev.batch_size * (ev.max_seq_len or data_cfg.max_seq_len)
        self._heldout = None

    def _load(self, model: Any) -> Any:
        from mmbert_train.evaluation import HeldoutSet

        if self._heldout is None:  # built once: the same masked tokens at every evaluation
            self._heldout = HeldoutSet.from_data_config(
                self.data_cfg, vocab_size=model.config.vocab_size, mask_token_id=model.config.mask_token_id
            )
        return self._heldout

    def _evaluate(self, state: State, logger: Logger) -> None:
        from mmbert_train.evaluation import evaluate_model

        composer_model = getattr(state.model, "module", state.model)  # DDP wraps the ComposerModel
        model = composer_model.model
        heldout = self._load(model)
        report = evaluate_model(model, heldout, heldout.groups, batch_tokens=self.batch_tokens)
        metrics: dict[str, float] = {}
        for language in heldout.reported:
            result = report.languages[language].score
            metrics[f"eval/{language}/loss"] = result.loss
            metrics[f"eval/{language}/accuracy"] = result.accuracy
        for name, group in report.groups.items():
            metrics[f"eval/group/{name}/loss"] = group.score.loss
            metrics[f"eval/group/{name}/accuracy"] = group.score.accuracy
        logger.log_metrics(metrics)

    def fit_start(self, state: State, logger: Logger) -> None:
        """Read the held-out set before the first batch: a problem with it stops the run now, not after the
        phase has trained."""
        self._load(getattr(state.model, "module", state.model).model)

    def batch_end(self, state: State, logger: Logger) -> None:
        unit_value = state.timestamp.get(self.interval.unit).value
        if self.interval.value > 0 and unit_value % self.interval.value == 0 and unit_value > 0:
            if state.max_duration is not None and state.timestamp >= state.max_duration:
                return  # fit_end scores the final weights
            self._evaluate(state, logger)

    def fit_end(self, state: State, logger: Logger) -> None:
        self._evaluate(state, logger)
