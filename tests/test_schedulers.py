"""LR schedules: values at warmup end, mid-phase and phase end equal the docstring formulas."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from composer.core import Time, Timestamp, TimeUnit

from mmbert_train.config import SchedulerConfig
from mmbert_train.train.schedulers import (
    ConstantScheduler,
    OneMinusSqrtDecayScheduler,
    WarmupStableDecayScheduler,
    build_scheduler,
)


def state_at(t: int, max_duration: str = "1000ba", unit: str = "batch"):
    return SimpleNamespace(max_duration=Time.from_timestring(max_duration), timestamp=Timestamp(**{unit: t}))


def test_warmup_then_constant_in_tokens():
    sched = WarmupStableDecayScheduler(t_warmup="3000tok", t_decay="0tok")
    at = lambda t: sched(state_at(t, "100000tok", "token"))  # noqa: E731
    assert at(0) == 0.0
    assert at(1500) == pytest.approx(0.5)
    assert at(3000) == 1.0  # warmup end
    assert at(50000) == 1.0 and at(100000) == 1.0


@pytest.mark.parametrize(
    "shape, s",
    [
        ("linear", lambda x: 1 - x),
        ("one_minus_sqrt", lambda x: 1 - math.sqrt(x)),
        ("cosine", lambda x: (1 + math.cos(math.pi * x)) / 2),
    ],
)
def test_warmup_stable_decay_formula(shape, s):
    alpha = 0.02
    sched = WarmupStableDecayScheduler(t_warmup="100ba", t_decay="400ba", alpha_f=alpha, decay_shape=shape)
    at = lambda t: sched(state_at(t))  # noqa: E731
    assert at(50) == pytest.approx(0.5)
    assert at(100) == 1.0  # warmup end
    assert at(450) == 1.0  # stable
    assert at(600) == 1.0  # decay starts at T - D = 600
    for t in (700, 800, 999):
        assert at(t) == pytest.approx(alpha + (1 - alpha) * s((t - 600) / 400), abs=1e-12)
    assert at(1000) == pytest.approx(alpha)  # phase end
    assert at(1200) == pytest.approx(alpha)  # clipped past the end


def test_one_minus_sqrt_over_the_whole_phase():
    sched = OneMinusSqrtDecayScheduler(alpha_f=0.02)
    at = lambda t: sched(state_at(t, "2000ba"))  # noqa: E731
    assert at(0) == 1.0
    assert at(500) == pytest.approx(0.02 + 0.98 * (1 - math.sqrt(0.25)))  # mid-phase
    assert at(2000) == pytest.approx(0.02)  # 8e-4 * 0.02 = 1.6e-5
    assert 8e-4 * at(2000) == pytest.approx(1.6e-5)


def test_dur_times_and_ssr():
    sched = WarmupStableDecayScheduler(t_warmup="0.1dur", t_decay="0.5dur", alpha_f=0.0, decay_shape="linear")
    assert sched(state_at(50)) == pytest.approx(0.5)  # warmup is 100ba of 1000
    assert sched(state_at(750)) == pytest.approx(0.5)  # halfway down the last 500
    # ssr 0.5 halves every time: warmup 50ba
    assert sched(state_at(25), ssr=0.5) == pytest.approx(0.5)


def test_mixed_units_are_rejected():
    sched = WarmupStableDecayScheduler(t_warmup="10tok")
    with pytest.raises(ValueError, match="must share a unit"):
        sched(state_at(5))


def test_build_from_recipe_sections():
    assert isinstance(build_scheduler(SchedulerConfig(name="constant")), ConstantScheduler)
    assert ConstantScheduler()(state_at(5)) == 1.0
    sched = build_scheduler(SchedulerConfig(t_decay="1dur", decay_shape="linear", alpha_f=0.04))
    assert sched(state_at(1000)) == pytest.approx(0.04)
    assert sched(state_at(500)) == pytest.approx(0.52)
    assert Time.from_timestring("1dur").unit == TimeUnit.DURATION
