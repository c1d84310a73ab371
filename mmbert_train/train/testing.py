"""Fixed, pre-packed Contract-3 batches for tests and examples that must not depend on data on disk.

The batches are a pure function of the seed: documents of random lengths packed left to right into rows, 30%
of the real tokens labelled. The same global batch can be given to one process or split across ranks
(:func:`rank_slice`), which is how the multi-process tests compare DDP / FSDP with a single process.
"""

from __future__ import annotations

from typing import Any

import torch
from composer.core import DataSpec
from torch.utils.data import DataLoader, IterableDataset

from mmbert_train.train.dataloader import num_rows_in_batch, num_tokens_in_batch, split_packed_batch


def packed_batches(
    n_batches: int,
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    *,
    seed: int = 0,
    max_docs: int = 3,
    mask_ratio: float = 0.3,
    mask_token_id: int = 4,
) -> list[dict[str, torch.Tensor]]:
    """``n_batches`` global batches of ``batch_size`` packed rows (input_ids, labels, attention_mask, doc_lens).

    Rows are filled to different lengths (some padding) with 1..max_docs documents each, and the number of
    labelled tokens differs from row to row, so per-rank means and the global token mean differ."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        input_ids = torch.zeros(batch_size, seq_len, dtype=torch.int64)
        labels = torch.full((batch_size, seq_len), -100, dtype=torch.int64)
        attention_mask = torch.zeros(batch_size, seq_len, dtype=torch.int64)
        doc_lens = torch.zeros(batch_size, max_docs, dtype=torch.int32)
        for row in range(batch_size):
            filled = int(torch.randint(seq_len // 2, seq_len + 1, (1,), generator=gen))
            n_docs = int(torch.randint(1, max_docs + 1, (1,), generator=gen))
            cuts = sorted(torch.randperm(filled - 1, generator=gen)[: n_docs - 1].add(1).tolist())
            lens = [b - a for a, b in zip([0, *cuts], [*cuts, filled])]
            doc_lens[row, : len(lens)] = torch.tensor(lens, dtype=torch.int32)
            tokens = torch.randint(5, vocab_size, (filled,), generator=gen)
            # a learnable pattern: each token repeats the one two positions back half of the time
            repeat = torch.rand(filled, generator=gen) < 0.5
            tokens[2:][repeat[2:]] = tokens[:-2][repeat[2:]]
            chosen = torch.rand(filled, generator=gen) < mask_ratio
            chosen[0] = True  # at least one label per row
            labels[row, :filled][chosen] = tokens[chosen]
            masked = tokens.clone()
            masked[chosen] = mask_token_id
            input_ids[row, :filled] = masked
            attention_mask[row, :filled] = 1
        batches.append(
            {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, "doc_lens": doc_lens}
        )
    return batches


def rank_slice(batch: dict[str, torch.Tensor], rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """Rank ``rank``'s contiguous share of a global batch (rows ``rank * B/W ... (rank + 1) * B/W``)."""
    n = batch["input_ids"].shape[0]
    if n % world_size:
        raise ValueError(f"batch of {n} rows does not split over {world_size} ranks")
    per = n // world_size
    return {k: v[rank * per : (rank + 1) * per] for k, v in batch.items()}


class _Batches(IterableDataset):
    """This rank's batches, in order. Iterable (like the real loader), so Composer does not ask for a
    DistributedSampler: each rank is handed its own rows already (:func:`rank_slice`)."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def fixed_data_spec(batches: list[dict[str, Any]]) -> DataSpec:
    """A Composer `DataSpec` yielding ``batches`` in order (one epoch = all of them), counted like the loader's."""
    loader = DataLoader(_Batches(batches), batch_size=None, shuffle=False)
    return DataSpec(
        loader,
        split_batch=split_packed_batch,
        get_num_samples_in_batch=num_rows_in_batch,
        get_num_tokens_in_batch=num_tokens_in_batch,
    )
