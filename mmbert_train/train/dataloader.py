"""The Composer side of the phase loader: a ``DataSpec`` around :class:`mmbert_train.data.loader.PackedMLMDataset`.

Composer splits each packed batch into device microbatches and counts its samples and tokens through the
functions given to ``DataSpec``; they live here so that ``mmbert_train.data`` does not depend on Composer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from composer.core import DataSpec
from torch.utils.data import DataLoader

from mmbert_train.constants import IGNORE_INDEX
from mmbert_train.data.loader import PackedMLMDataset, build_packed_dataset


def split_packed_batch(batch: Mapping[str, Any], microbatch_size: int | float) -> list[dict[str, Any]]:
    """Split a packed batch into microbatches of ``microbatch_size`` rows, keeping every tensor aligned.

    Tensors are cut along dim 0; ``doc_lens`` is trimmed to the most documents a microbatch holds; the float
    metrics are copied to every microbatch.
    """
    if isinstance(microbatch_size, float):
        raise ValueError("packed batches split by whole rows; got a float microbatch size")
    n = batch["input_ids"].shape[0]
    out = []
    for start in range(0, n, int(microbatch_size)):
        micro: dict[str, Any] = {}
        for key, value in batch.items():
            rows = torch.is_tensor(value) and value.dim() > 0  # scalars (metrics) go to every microbatch
            micro[key] = value[start : start + int(microbatch_size)] if rows else value
        doc_lens = micro.get("doc_lens")
        if doc_lens is not None and doc_lens.numel():
            width = int((doc_lens > 0).sum(1).max())
            micro["doc_lens"] = doc_lens[:, : max(width, 1)]
        out.append(micro)
    return out


def num_rows_in_batch(batch: Mapping[str, Any]) -> int:
    return int(batch["input_ids"].shape[0])


def num_tokens_in_batch(batch: Mapping[str, Any]) -> dict[str, int]:
    """Composer's token counts: ``total`` = real (non-padding) tokens, ``loss_generating`` = labelled tokens."""
    # counted in numpy when the batch is still on the CPU: no torch intra-op thread pool for two reductions
    mask, labels = batch["attention_mask"], batch["labels"]
    if mask.device.type == "cpu":
        return {
            "total": int(np.count_nonzero(mask.numpy())),
            "loss_generating": int(np.count_nonzero(labels.numpy() != IGNORE_INDEX)),
        }
    return {"total": int(mask.sum()), "loss_generating": int((labels != IGNORE_INDEX).sum())}


def make_data_spec(dataset: PackedMLMDataset) -> DataSpec:
    """Wrap the dataset in a (worker-less) DataLoader and a Composer ``DataSpec``.

    The outer DataLoader runs in the training process so that ``dataloader.dataset`` is the very object that
    iterates (Composer calls its ``state_dict`` / ``load_state_dict``); reading happens in the inner
    DataLoader's workers.
    """
    loader = DataLoader(dataset, batch_size=None, num_workers=0)
    return DataSpec(
        loader,
        split_batch=split_packed_batch,
        get_num_samples_in_batch=num_rows_in_batch,
        get_num_tokens_in_batch=num_tokens_in_batch,
    )


def build_train_dataloader(data_cfg, **kwargs: Any) -> DataSpec:
    """The phase's training ``DataSpec``: :func:`mmbert_train.data.loader.build_packed_dataset` (same keyword
    arguments) wrapped by :func:`make_data_spec`."""
    return make_data_spec(build_packed_dataset(data_cfg, **kwargs))


__all__ = [
    "build_train_dataloader",
    "make_data_spec",
    "num_rows_in_batch",
    "num_tokens_in_batch",
    "split_packed_batch",
]
