"""Batch-size warmup: the global batch (in packed rows) as a function of training progress.

mmBERT pre-training grows the global batch linearly from 48 to 4608 sequences over the first 60B tokens
(100B for mmBERT-small); mid-training and decay use the full batch from the start. With ``t`` the tokens seen
so far in the phase, ``S`` the start size, ``F`` the full size and ``T`` the warmup budget::

    batch(t) = S + (F - S) * min(1, t / T)            (T = 0: batch(t) = F)

rounded down to a multiple of ``world_size * device_microbatch_size`` (``device_microbatch_size`` = 1 when not
given) and never below one such multiple, so every rank gets the same number of rows and, with a microbatch
size, the same number of full microbatches (static shapes for ``torch.compile``, equal collectives for FSDP).

"Tokens seen" counts row capacity, ``rows so far * max_seq_len``: it is the same on every rank and every data
loader worker without any communication, so the sequence of batch sizes is a pure function of the step. Packed
rows are ~99% full (docs/loader.md), so this tracks real tokens closely.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


def check_batch_warmup(start_batch_size: int, warmup_tokens: int, full_batch_size: int) -> None:
    """The one rule of a batch-size warmup (the recipe check and :class:`BatchSizeSchedule` both call it):
    ``warmup_tokens >= 0``; ``warmup_tokens = 0`` is no warmup; otherwise the start size is in [1, full]."""
    if warmup_tokens < 0:
        raise ValueError(f"data.batch_warmup.tokens must be >= 0, got {warmup_tokens}")
    if warmup_tokens > 0 and not 0 < start_batch_size <= full_batch_size:
        raise ValueError(
            f"data.batch_warmup.start_batch_size {start_batch_size} must be in "
            f"[1, trainer.global_batch_size = {full_batch_size}]"
        )


@dataclass(frozen=True)
class BatchSizeSchedule:
    """Global and per-rank batch sizes (rows) for each step; see the module docstring for the formula."""

    full_batch_size: int
    max_seq_len: int
    start_batch_size: int = 0  # used when warmup_tokens > 0
    warmup_tokens: int = 0
    world_size: int = 1
    device_microbatch_size: int | None = None

    def __post_init__(self) -> None:
        unit = self.unit
        if self.full_batch_size < unit or self.full_batch_size % unit:
            raise ValueError(
                f"global batch size {self.full_batch_size} must be a positive multiple of world_size "
                f"{self.world_size} x device_microbatch_size {self.device_microbatch_size or 1} = {unit}"
            )
        check_batch_warmup(self.start_batch_size, self.warmup_tokens, self.full_batch_size)

    @property
    def unit(self) -> int:
        return self.world_size * (self.device_microbatch_size or 1)

    @property
    def warmup(self) -> bool:
        return self.warmup_tokens > 0

    def global_batch_size(self, tokens_seen: int) -> int:
        """``batch(t)`` rounded down to a multiple of :attr:`unit` (at least one unit)."""
        if not self.warmup or tokens_seen >= self.warmup_tokens:
            return self.full_batch_size
        span = self.full_batch_size - self.start_batch_size
        size = self.start_batch_size + span * max(0, tokens_seen) // self.warmup_tokens  # exact integers
        return max(self.unit, size - size % self.unit)

    def device_batch_size(self, tokens_seen: int) -> int:
        return self.global_batch_size(tokens_seen) // self.world_size

    def global_sizes(self, rows_seen: int = 0) -> Iterator[int]:
        """Global batch sizes step after step, starting after ``rows_seen`` rows."""
        while True:
            size = self.global_batch_size(rows_seen * self.max_seq_len)
            yield size
            rows_seen += size
