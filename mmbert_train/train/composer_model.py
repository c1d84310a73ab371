"""Our encoder as a Composer `ComposerModel`: MLM loss, metrics, FLOPs per batch (for MFU), FSDP wrapping.

Loss weighting. The model returns the mean cross-entropy over the labelled (masked) tokens of one microbatch.
The trainer runs Composer with ``accumulate_train_batch_on_tokens=True`` and a `DataSpec` whose
``get_num_tokens_in_batch`` reports the labelled tokens (:func:`batch_token_counts`); Composer then scales each
microbatch loss by ``n_mb / (N / world_size)``, with ``N`` the labelled tokens of the whole global batch summed over
ranks, and DDP / FSDP average gradients over ranks. The gradient is therefore that of

    loss = sum over all masked tokens of all ranks and microbatches of CE / N,

the global mean over tokens, not a mean of per-rank means (which would over-weight ranks with few masks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from composer.models import ComposerModel
from torchmetrics import Metric

from mmbert_train.constants import IGNORE_INDEX
from mmbert_train.model import MMBertForMaskedLM, ModelConfig
from mmbert_train.model.modeling import MMBertEncoderLayer

MODEL_INPUTS = ("input_ids", "attention_mask", "labels", "doc_lens", "cu_seqlens", "max_seqlen")


def batch_token_counts(batch: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """``total``: real (non-padding) tokens; ``loss_generating``: labelled tokens. Composer's ``tok`` time counts
    ``total``; loss accumulation over microbatches and ranks weights by ``loss_generating``."""
    mask = batch.get("attention_mask")
    total = int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
    labels = batch.get("labels")
    labelled = int((labels != IGNORE_INDEX).sum()) if labels is not None else 0
    return {"total": total, "loss_generating": labelled}


class MLMAccuracy(Metric):
    """Share of masked tokens whose top-1 prediction is the original token, from the counts the model's loss
    returns (``num_correct``, ``num_labelled``)."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, num_correct: torch.Tensor, num_labelled: torch.Tensor) -> None:
        self.correct += num_correct.detach().float().to(self.correct.device)
        self.total += num_labelled.detach().float().to(self.total.device)

    def compute(self) -> torch.Tensor:
        return self.correct / self.total.clamp(min=1)


class MLMCrossEntropy(Metric):
    """Mean cross-entropy over masked tokens, summed over batches and ranks before dividing (token-weighted);
    updated with a microbatch's mean loss and its number of labelled tokens."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("loss_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, loss: torch.Tensor, num_labelled: torch.Tensor) -> None:
        n = num_labelled.detach().double().to(self.total.device)
        self.loss_sum += loss.detach().double().to(self.loss_sum.device) * n
        self.total += n

    def compute(self) -> torch.Tensor:
        return self.loss_sum / self.total.clamp(min=1)


def _model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    # the loader may add per-batch metrics (packing_efficiency) next to the tensors; the model takes only these
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def forward_flops(config: ModelConfig, doc_lens: torch.Tensor, n_labelled: int) -> float:
    """Forward-pass FLOPs (multiply-adds x 2) of one packed batch.

    Per real token: the encoder's matrix multiplies, ``2 * (4 h^2 + 3 h i)`` per layer (fused QKV + out; GeGLU in
    ``h x 2i`` + out ``i x h``). Attention scores and values cost ``4 h c`` per token and layer, with ``c`` the
    keys it sees: its whole document in global layers, at most ``local_attention + 1`` keys in local ones. The MLM
    head (dense ``h x h`` + decoder ``h x V``) runs only on the ``n_labelled`` masked tokens (sparse prediction).
    """
    h, i, n_layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    lens = doc_lens.reshape(-1).to(torch.float64)
    lens = lens[lens > 0]
    tokens = float(lens.sum())
    n_global = sum(1 for layer in range(n_layers) if config.is_global_layer(layer))
    n_local = n_layers - n_global
    window = float(config.local_attention + 1)
    global_keys = float((lens * lens).sum())  # sum over tokens of the document length
    local_keys = float((lens * torch.clamp(lens, max=window)).sum())
    dense = 2.0 * (4 * h * h + 3 * h * i) * n_layers * tokens
    attention = 4.0 * h * (n_global * global_keys + n_local * local_keys)
    head = 2.0 * (h * h + h * config.vocab_size) * n_labelled
    return dense + attention + head


def shard_each_layer(module: torch.nn.Module) -> bool:
    """FSDP wrap policy: each encoder layer is its own FSDP unit (all-gathered just before it runs, resharded
    after); the embeddings, head and tied decoder stay in the model's root unit."""
    return isinstance(module, MMBertEncoderLayer)


def checkpoint_each_layer(module: torch.nn.Module) -> bool:
    """Activation checkpointing (``trainer.fsdp.activation_checkpointing``): recompute each encoder layer in
    backward instead of keeping its activations."""
    return isinstance(module, MMBertEncoderLayer)


class MMBertComposerModel(ComposerModel):
    """Wraps `MMBertForMaskedLM` for Composer. Batches are Contract-3 dicts (packed rows + labels)."""

    def __init__(self, model: MMBertForMaskedLM) -> None:
        super().__init__()
        # Composer (FSDP1 and FSDP2 alike) reads the wrap and activation-checkpointing policies from the
        # ComposerModel's children, not from the ComposerModel: defined here on self, both were silently ignored
        # (one FSDP unit for the whole model, no checkpointing).
        model.fsdp_wrap_fn = shard_each_layer
        model.activation_checkpointing_fn = checkpoint_each_layer
        self.model = model
        self.config: ModelConfig = model.config
        self.train_metrics = {"MLMAccuracy": MLMAccuracy()}
        self.eval_metrics = {"MLMCrossEntropy": MLMCrossEntropy(), "MLMAccuracy": MLMAccuracy()}

    # ---- Composer's model interface -------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Any]):
        return self.model(**_model_inputs(batch))

    def loss(self, outputs, batch, *args, **kwargs) -> torch.Tensor:
        return outputs.loss

    def eval_forward(self, batch: Mapping[str, Any], outputs: Any | None = None):
        return outputs if outputs is not None else self.forward(batch)

    def get_metrics(self, is_train: bool = False) -> dict[str, Metric]:
        return self.train_metrics if is_train else self.eval_metrics

    def update_metric(self, batch: Mapping[str, Any], outputs: Any, metric: Metric) -> None:
        # The model's chunked loss counts correct predictions in its own chunk loop; no logits are formed.
        if isinstance(metric, MLMCrossEntropy):
            metric.update(outputs.loss, outputs.num_labelled)
        else:
            metric.update(outputs.num_correct, outputs.num_labelled)

    def flops_per_batch(self, batch: Mapping[str, Any]) -> float:
        """Training FLOPs of one batch (forward x 3: the backward costs twice the forward)."""
        doc_lens = batch.get("doc_lens")
        if doc_lens is None:  # padded form: one document per row
            doc_lens = batch["attention_mask"].sum(dim=-1)
        return 3.0 * forward_flops(self.config, doc_lens, batch_token_counts(batch)["loss_generating"])
