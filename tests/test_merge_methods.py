"""The merge arithmetic against direct, literal implementations of its definition (exact equality)."""

from __future__ import annotations

import pytest
import torch

from mmbert_train.merge.methods import (
    chunk_bounds,
    ema_merge,
    ema_weights,
    kth_largest,
    linear_merge,
    ties_merge,
)


def literal_ties(base, models, density, weights, scale):
    """TIES written step by step as docs/merging.md states it (Yadav et al., 2023), over whole tensors, with a sort instead of a radix selection."""
    out = {}
    for key, b in base.items():
        b32 = b.float().reshape(-1)
        weighted = []
        for model, w in zip(models, weights):
            delta = model[key].float().reshape(-1) - b32
            k = int(density * delta.numel())
            # stable sort: among equal magnitudes the earlier entry ranks first
            order = torch.sort(delta.abs(), descending=True, stable=True).indices
            keep = torch.zeros(delta.numel(), dtype=torch.bool)
            keep[order[:k]] = True
            weighted.append(torch.where(keep, delta, torch.zeros(())) * w)
        merged = torch.zeros_like(b32)
        divisor = torch.zeros_like(b32)
        total = torch.stack(weighted).sum(0)
        for i in range(b32.numel()):
            elected = 1.0 if total[i] >= 0 else -1.0
            num, den = 0.0, 0.0
            for wd, w in zip(weighted, weights):
                if wd[i] != 0 and torch.sign(wd[i]) == elected:
                    num, den = num + wd[i], den + w
            merged[i], divisor[i] = num, (den if den != 0 else 1.0)
        out[key] = (b32 + scale * (merged / divisor)).reshape(b.shape).to(b.dtype)
    return out


def random_state(shape_by_key, seed, dtype=torch.float32, integer_valued=False):
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shape_by_key.items():
        t = torch.randn(shape, generator=gen)
        out[key] = (t * 3).round().to(dtype) if integer_valued else t.to(dtype)
    return out


SHAPES = {"emb": (13, 6), "norm": (6,), "w": (5, 7)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("density", [0.0, 0.2, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("chunk_numel", [4, 1 << 20])
def test_ties_equals_literal_definition(density, chunk_numel):
    base = random_state(SHAPES, 0)
    models = [random_state(SHAPES, s) for s in (1, 2, 3)]
    weights, scale = [0.5, 1.0, 2.0], 0.7
    got = ties_merge(base, models, density=density, weights=weights, scale=scale, chunk_numel=chunk_numel)
    want = literal_ties(base, models, density, weights, scale)
    for key in SHAPES:
        assert torch.equal(got[key], want[key]), key


def test_ties_ties_at_the_threshold_keep_the_earliest_entries():
    # integer-valued tensors: many task-vector entries share a magnitude, so the top-k cut falls inside a tie
    base = random_state(SHAPES, 10, integer_valued=True)
    models = [random_state(SHAPES, s, integer_valued=True) for s in (11, 12)]
    for chunk_numel in (3, 1 << 20):
        got = ties_merge(base, models, density=0.4, weights=[1.0, 3.0], chunk_numel=chunk_numel)
        want = literal_ties(base, models, 0.4, [1.0, 3.0], 1.0)
        for key in SHAPES:
            assert torch.equal(got[key], want[key]), (key, chunk_numel)


def test_ties_density_one_single_model_gives_the_model_back():
    base, model = random_state(SHAPES, 0), random_state(SHAPES, 1)
    got = ties_merge(base, [model], density=1.0)
    for key in SHAPES:
        assert torch.allclose(got[key], model[key], rtol=0, atol=1e-6)


def test_ties_scale_and_weights():
    base = {"x": torch.tensor([0.0, 0.0, 0.0, 1.0])}
    a = {"x": torch.tensor([1.0, 2.0, -1.0, 1.0])}
    b = {"x": torch.tensor([3.0, -1.0, -3.0, 1.0])}
    # entry 0: both +: (1*1 + 3*3) / (1 + 3) = 2.5; entry 1: elected sign of 2 - 3 < 0: only b: -3 / 3 = -1
    # entry 2: both -: (-1 - 9) / 4 = -2.5; entry 3: no change in either model: the base (divisor 1)
    got = ties_merge(base, [a, b], density=1.0, weights=[1.0, 3.0], scale=2.0)["x"]
    assert torch.equal(got, torch.tensor([5.0, -2.0, -5.0, 1.0]))
    # the weights are normalised: scaling all of them changes nothing
    again = ties_merge(base, [a, b], density=1.0, weights=[10.0, 30.0], scale=2.0)["x"]
    assert torch.equal(got, again)
    # scale 0 returns the base, density 0 too
    assert torch.equal(ties_merge(base, [a, b], density=1.0, scale=0.0)["x"], base["x"])
    assert torch.equal(ties_merge(base, [a, b], density=0.0)["x"], base["x"])


def test_ties_trimmed_zero_agrees_with_neither_sign():
    base = {"x": torch.zeros(4)}
    a = {"x": torch.tensor([4.0, 0.1, 0.0, 0.0])}  # density 0.25 keeps only the 4.0
    b = {"x": torch.tensor([0.2, 0.3, 0.0, 0.0])}  # ... and only the 0.3
    got = ties_merge(base, [a, b], density=0.25)["x"]
    # entry 0: only a's 4.0 survives: 4 / 1; entry 1: only b's 0.3: 0.3 / 1 (a's trimmed 0.1 is not averaged in)
    assert torch.allclose(got, torch.tensor([4.0, 0.3, 0.0, 0.0]))


def test_ties_keeps_dtype_and_copies_non_float_tensors():
    base = {"w": torch.randn(4, 3).bfloat16(), "ids": torch.arange(5)}
    models = [{"w": torch.randn(4, 3).bfloat16(), "ids": torch.arange(5)} for _ in range(2)]
    got = ties_merge(base, models, density=0.5)
    assert got["w"].dtype == torch.bfloat16 and torch.equal(got["ids"], torch.arange(5))
    models[1]["ids"] = torch.arange(5) + 1
    with pytest.raises(ValueError, match="ids: non-float tensor differs"):
        ties_merge(base, models, density=0.5)


def test_linear_and_ema_merges():
    models = [random_state(SHAPES, s) for s in (1, 2, 3)]
    got = linear_merge(models, [1.0, 2.0, 1.0], chunk_numel=5)
    for key in SHAPES:
        want = (models[0][key] * 0.25 + models[1][key] * 0.5) + models[2][key] * 0.25
        assert torch.allclose(got[key], want, rtol=0, atol=1e-6)
    assert ema_weights(3, 0.5) == pytest.approx([1 / 7, 2 / 7, 4 / 7])
    assert ema_weights(4, 1.0) == pytest.approx([0.25] * 4)
    ema = ema_merge(models, beta=0.5)
    for key in SHAPES:
        want = models[0][key] / 7 + models[1][key] * 2 / 7 + models[2][key] * 4 / 7
        assert torch.allclose(ema[key], want, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="beta must be in"):
        ema_weights(3, 0.0)
    with pytest.raises(ValueError, match="got 2 weights for 3 models"):
        linear_merge(models, [1.0, 1.0])


def test_mismatched_state_dicts_are_named():
    base = random_state(SHAPES, 0)
    other = random_state({**SHAPES, "emb": (12, 6)}, 1)
    with pytest.raises(ValueError, match=r"emb: shape \[12, 6\] in input 1"):
        ties_merge(base, [other], density=0.5)
    missing = {k: v for k, v in random_state(SHAPES, 1).items() if k != "norm"}
    with pytest.raises(ValueError, match="norm"):
        ties_merge(base, [missing], density=0.5)


def test_kth_largest_matches_sort():
    gen = torch.Generator().manual_seed(0)
    values = torch.randint(0, 1 << 31 - 1, (1000,), generator=gen, dtype=torch.int64).to(torch.int32)
    values[::7] = values[3]  # plenty of ties
    ordered = torch.sort(values, descending=True).values
    for k in (1, 2, 17, 500, 999, 1000):

        def chunks():
            yield from values.split(64)

        value, ties = kth_largest(chunks, k, 32)
        assert value == int(ordered[k - 1])
        assert ties == k - int((values > value).sum())


def test_chunk_bounds_cover_whole_rows():
    assert chunk_bounds(12, 5, row=2) == [(0, 4), (4, 8), (8, 12)]
    assert chunk_bounds(7, 100) == [(0, 7)]
    assert chunk_bounds(10, 3, row=4) == [(0, 3), (3, 6), (6, 9), (9, 10)]
