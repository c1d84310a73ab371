"""LR schedules of the mmBERT recipe, as Composer schedulers (callables ``(state, ssr) -> LR multiplier``).

Composer multiplies the optimizer's initial (peak) LR by the value returned at every batch. Times are Composer
times (``"3000000000tok"``, ``"100ba"``, ``"1dur"``); a ``dur`` time is a fraction of ``max_duration``. The scale
schedule ratio ``ssr`` stretches every time, as in Composer's own schedulers.
"""

from __future__ import annotations

import math
from typing import Literal

from composer.core import State, Time, TimeUnit

from mmbert_train.config import SchedulerConfig

DecayShape = Literal["linear", "one_minus_sqrt", "cosine"]


def decay_fraction(x: float, shape: DecayShape) -> float:
    """How much of the (1 - alpha_f) range is left after a fraction ``x`` in [0, 1] of the decay.

    linear: ``1 - x``;  one_minus_sqrt: ``1 - sqrt(x)``;  cosine: ``(1 + cos(pi x)) / 2``.
    """
    x = min(max(x, 0.0), 1.0)
    if shape == "linear":
        return 1.0 - x
    if shape == "one_minus_sqrt":
        return 1.0 - math.sqrt(x)
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * x))
    raise ValueError(f"unknown decay shape {shape!r}")


def _as_time(value: str | Time, state: State, ssr: float) -> Time:
    """A time in the unit it is counted in: ``dur`` becomes a share of ``max_duration``; then scaled by ssr."""
    time = Time.from_timestring(value) if isinstance(value, str) else value
    if time.unit == TimeUnit.DURATION:
        assert state.max_duration is not None, "schedulers run with max_duration set"
        if state.max_duration.unit == TimeUnit.EPOCH:
            raise ValueError("`dur` times need max_duration in ba, sp or tok, not epochs")
        time = Time(int(time.value * state.max_duration.value), state.max_duration.unit)
    if time.unit == TimeUnit.SECOND:
        raise ValueError("wall-clock times cannot drive a schedule")
    return Time(int(time.value * ssr), time.unit)


class WarmupStableDecayScheduler:
    r"""Warmup-stable-decay ("trapezoidal"): linear warmup, a constant plateau, then a decay to ``alpha_f``.

    With ``t`` the time elapsed in the phase, ``W = t_warmup``, ``D = t_decay`` and ``T = t_max`` (default
    ``max_duration``), the LR multiplier is::

        t < W:                m(t) = t / W
        W <= t < T - D:       m(t) = 1
        T - D <= t:           m(t) = alpha_f + (1 - alpha_f) * s(x),   x = (t - (T - D)) / D  (clipped to [0, 1])

    where ``s`` is the decay shape: linear ``1 - x``, one_minus_sqrt ``1 - sqrt(x)`` (mmBERT-base's decay phase,
    alpha_f 0.02), cosine ``(1 + cos(pi x)) / 2``. ``D = 0`` gives warmup-then-constant (pre-training);
    ``W = 0, D = T`` a pure decay (the decay phase).
    """

    def __init__(
        self,
        t_warmup: str | Time = "0ba",
        t_decay: str | Time = "0ba",
        alpha_f: float = 0.0,
        decay_shape: DecayShape = "one_minus_sqrt",
        t_max: str | Time = "1dur",
    ) -> None:
        decay_fraction(0.0, decay_shape)  # validates the shape
        self.t_warmup, self.t_decay, self.t_max = t_warmup, t_decay, t_max
        self.alpha_f, self.decay_shape = alpha_f, decay_shape

    def __call__(self, state: State, ssr: float = 1.0) -> float:
        warmup = _as_time(self.t_warmup, state, ssr)
        decay = _as_time(self.t_decay, state, ssr)
        t_max = _as_time(self.t_max, state, ssr)
        now = state.timestamp.get(t_max.unit).value
        if warmup.value > 0:
            if warmup.unit != t_max.unit:
                raise ValueError(f"t_warmup ({warmup}) and max_duration ({t_max}) must share a unit")
            if now < warmup.value:
                return now / warmup.value
        if decay.value > 0:
            if decay.unit != t_max.unit:
                raise ValueError(f"t_decay ({decay}) and max_duration ({t_max}) must share a unit")
            start = t_max.value - decay.value
            if now >= start:
                x = (now - start) / decay.value
                return self.alpha_f + (1.0 - self.alpha_f) * decay_fraction(x, self.decay_shape)
        return 1.0


class OneMinusSqrtDecayScheduler(WarmupStableDecayScheduler):
    r"""The decay phase of mmBERT-base: ``m(t) = alpha_f + (1 - alpha_f) * (1 - sqrt(t / T))`` over the whole
    phase (``T = max_duration``), from 1 at the start to ``alpha_f`` at the end (0.02: 8e-4 -> 1.6e-5)."""

    def __init__(self, alpha_f: float = 0.0, t_max: str | Time = "1dur") -> None:
        super().__init__(
            t_warmup="0ba", t_decay=t_max, alpha_f=alpha_f, decay_shape="one_minus_sqrt", t_max=t_max
        )


class ConstantScheduler:
    """``m(t) = 1`` (mid-training)."""

    def __call__(self, state: State, ssr: float = 1.0) -> float:
        return 1.0


def build_scheduler(cfg: SchedulerConfig):
    """The Composer scheduler of a recipe's ``scheduler:`` section."""
    if cfg.name == "constant":
        return ConstantScheduler()
    return WarmupStableDecayScheduler(
        t_warmup=cfg.t_warmup, t_decay=cfg.t_decay, alpha_f=cfg.alpha_f, decay_shape=cfg.decay_shape
    )
