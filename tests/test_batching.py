"""Batch-size warmup: the formula, rounding to ranks x microbatch, and the step sequence."""

from __future__ import annotations

import itertools

import pytest

from mmbert_train.data.batching import BatchSizeSchedule


def test_paper_warmup_formula():
    s = BatchSizeSchedule(4608, 1024, start_batch_size=48, warmup_tokens=60_000_000_000, world_size=8)
    assert s.global_batch_size(0) == 48
    # halfway: 48 + 4560 / 2 = 2328, a multiple of 8
    assert s.global_batch_size(30_000_000_000) == 2328
    # rounded down to a multiple of 8: 48 + 4560 * 0.1 = 504
    assert s.global_batch_size(6_000_000_000) == 504
    assert s.global_batch_size(6_000_000_000 + 2_000_000_000 // 1000) == 504  # floor, not round
    assert s.global_batch_size(60_000_000_000) == 4608
    assert s.global_batch_size(10**15) == 4608
    assert s.device_batch_size(30_000_000_000) == 2328 // 8


def test_rounding_to_ranks_and_microbatches():
    s = BatchSizeSchedule(
        64, 16, start_batch_size=6, warmup_tokens=16 * 1000, world_size=2, device_microbatch_size=4
    )
    sizes = [s.global_batch_size(t) for t in range(0, 16 * 1100, 16)]
    assert all(size % 8 == 0 and 8 <= size <= 64 for size in sizes)
    assert sizes[0] == 8  # 6 rounds below one unit: at least one microbatch per rank
    assert sizes == sorted(sizes) and sizes[-1] == 64


def test_no_warmup_and_step_sequence():
    assert list(itertools.islice(BatchSizeSchedule(32, 128).global_sizes(), 3)) == [32, 32, 32]
    s = BatchSizeSchedule(40, 10, start_batch_size=4, warmup_tokens=10 * 100, world_size=2)
    steps = list(itertools.islice(s.global_sizes(), 12))
    rows = 0
    for size in steps:  # each step's size follows from the capacity tokens of all earlier steps
        assert size == s.global_batch_size(rows * 10)
        rows += size
    assert steps[0] == 4 and steps[-1] == 40


def test_bad_sizes():
    with pytest.raises(ValueError, match="multiple of world_size 4"):
        BatchSizeSchedule(30, 16, world_size=4)
    with pytest.raises(ValueError, match="start_batch_size"):
        BatchSizeSchedule(32, 16, start_batch_size=64, warmup_tokens=100)
