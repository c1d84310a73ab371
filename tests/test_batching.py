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
    # By hand: step k sees t = 10 x (rows of the earlier steps) capacity tokens, batch(t) = 4 + 36 t / 1000 rounded
    # down to a multiple of 2 ranks: t = 0 -> 4; 40 -> 5.44 -> 4; 80 -> 6.88 -> 6; 140 -> 9.04 -> 8;
    # 220 -> 11.92 -> 10; 320 -> 15.52 -> 14; 460 -> 20.56 -> 20; 660 -> 27.76 -> 26; 920 -> 37.12 -> 36;
    # 1280 >= 1000 -> 40 from then on.
    assert list(itertools.islice(s.global_sizes(), 12)) == [4, 4, 6, 8, 10, 14, 20, 26, 36, 40, 40, 40]
    # resuming after 46 rows (the first 6 steps) continues the same sequence
    assert list(itertools.islice(s.global_sizes(rows_seen=46), 4)) == [20, 26, 36, 40]


def test_bad_sizes():
    with pytest.raises(ValueError, match="multiple of world_size 4"):
        BatchSizeSchedule(30, 16, world_size=4)
    with pytest.raises(
        ValueError, match=r"start_batch_size 64 must be in \[1, trainer.global_batch_size = 32\]"
    ):
        BatchSizeSchedule(32, 16, start_batch_size=64, warmup_tokens=100)
    with pytest.raises(
        ValueError, match=r"start_batch_size 0 must be in \[1, "
    ):  # a warmup needs a start size
        BatchSizeSchedule(32, 16, start_batch_size=0, warmup_tokens=100)
    with pytest.raises(ValueError, match=r"data.batch_warmup.tokens must be >= 0, got -1"):
        BatchSizeSchedule(32, 16, warmup_tokens=-1)
