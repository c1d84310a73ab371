"""The merge arithmetic: TIES, weighted averages, exponentially weighted averages of checkpoints.

Every method works on one tensor at a time, seen as a flat vector of ``numel`` entries that is read in chunks of
consecutive entries (for a ``[V, H]`` embedding: blocks of whole rows). ``read(i, start, stop)`` returns entries
``start:stop`` of input ``i`` as a float tensor (input 0 is the base, when the method has one). Chunking never
changes the result: the only whole-tensor statistic, TIES' top-k threshold, is found exactly in extra passes
over the chunks (:func:`kth_largest`). The in-memory functions (:func:`ties_merge`, :func:`linear_merge`) run the
same code over state dicts, so the tests of the arithmetic are tests of the streaming engine too.

TIES (Yadav et al., 2023), with per-model weights normalised as in mergekit's ``ties`` with ``normalize: true``.
For each tensor, with base ``b``, models ``m_1..m_n`` and weights ``w_1..w_n``:

    d_j   = m_j - b                                            task vector
    t_j   = d_j with all but its k = int(density * numel) largest-magnitude entries set to 0
            (entries of equal magnitude at the cut are kept in row-major order, first ones first)
    s     = sign(sum_j w_j t_j), with 0 counted as +1          elected sign, per entry
    a_j   = [sign(w_j t_j) == s]                               agreement; a zero agrees with neither sign
    delta = sum_j a_j w_j t_j / sum_j a_j w_j                  (denominator 1 where no model agrees)
    out   = b + scale * delta

Linear: ``out = sum_j w_j m_j / sum_j w_j``. Exponentially weighted average over the last N checkpoints of one
run (oldest first, k = 1..N): ``w_k = beta^(N-k)``, i.e. the newest checkpoint weighs 1, the one before beta, ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

# read(i, start, stop) -> entries start:stop of input i, flattened, in the compute dtype
Reader = Callable[[int, int, int], Tensor]

# 256K entries = 1 MB per float32 chunk. A TIES step holds ~20 chunk-sized temporaries; small chunks also keep
# what glibc's allocator retains small. Smaller chunks cost Python overhead, larger ones memory.
DEFAULT_CHUNK_NUMEL = 1 << 18


def chunk_bounds(numel: int, chunk_numel: int, row: int = 1) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges covering ``numel`` entries; whole rows of ``row`` entries when a row fits."""
    step = max(1, chunk_numel // row) * row if row <= chunk_numel else chunk_numel
    return [(start, min(start + step, numel)) for start in range(0, numel, step)] or [(0, 0)]


def ema_weights(n: int, beta: float) -> list[float]:
    """Weights of an exponentially weighted average of ``n`` checkpoints, oldest first: ``beta^(n-k)``, summing to 1."""
    if n < 1:
        raise ValueError(f"an exponentially weighted average needs at least one checkpoint, got {n}")
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    raw = [beta ** (n - k) for k in range(1, n + 1)]
    total = sum(raw)
    return [w / total for w in raw]


def check_weights(weights: Sequence[float] | None, n: int, what: str = "models") -> list[float]:
    """``weights`` as a list of ``n`` non-negative numbers with a positive sum (all ones when ``None``)."""
    if weights is None:
        return [1.0] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"got {len(weights)} weights for {n} {what}; give one weight per model")
    if any(not (w >= 0.0 and w != float("inf")) for w in weights) or sum(weights) <= 0.0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {weights}")
    return weights


# ----------------------------------------------------------------------------------------------- top-k by chunks


def _magnitude_bits(x: Tensor) -> Tensor:
    """|x| as integers that sort like the magnitudes (the IEEE bit pattern of a non-negative float is monotone)."""
    return x.abs().view(torch.int64 if x.dtype == torch.float64 else torch.int32)


def kth_largest(bit_chunks: Callable[[], Iterator[Tensor]], k: int, nbits: int) -> tuple[int, int]:
    """Find the k-th largest of non-negative integers given in chunks, exactly, by radix selection.

    ``bit_chunks()`` yields the values (a fresh pass each call; one pass per 16 bits). Returns ``(value, ties)``:
    the k-th largest value and how many entries equal to it belong to the top k (the others equal to it don't).
    """
    prefix, known, remaining = 0, 0, k
    while known < nbits:
        step = min(16, nbits - known)
        shift = nbits - known - step
        hist = torch.zeros(1 << step, dtype=torch.int64)
        for bits in bit_chunks():
            if known:
                bits = bits[(bits >> (shift + step)) == prefix]
            hist += torch.bincount(((bits >> shift) & ((1 << step) - 1)).long(), minlength=1 << step)
        from_top = hist.flip(0).cumsum(0)  # from_top[j]: entries whose digit is >= (2^step - 1 - j)
        j = int(torch.searchsorted(from_top, torch.tensor([remaining]), right=False)[0])
        digit = (1 << step) - 1 - j
        remaining -= int(from_top[j] - hist[digit])  # drop the entries with a larger digit
        prefix = (prefix << step) | digit
        known += step
    return prefix, remaining


def _top_k_mask(bits: Tensor, threshold: int, ties_left: int) -> tuple[Tensor, int]:
    """Entries above ``threshold``, plus the first ``ties_left`` equal to it. Returns (mask, ties still left)."""
    keep = bits > threshold
    if ties_left > 0:
        equal = bits == threshold
        keep |= equal & (torch.cumsum(equal, 0) <= ties_left)
        ties_left = max(0, ties_left - int(equal.sum()))
    return keep, ties_left


# ------------------------------------------------------------------------------------------------------ methods


def ties_chunks(
    read: Reader,
    n_models: int,
    bounds: Sequence[tuple[int, int]],
    *,
    density: float,
    weights: Sequence[float],
    scale: float,
) -> Iterator[Tensor]:
    """TIES over one tensor, chunk by chunk (see the module docstring). Inputs: 0 = base, 1..n_models = models."""
    numel = bounds[-1][1]
    k = int(density * numel)
    if len(bounds) == 1:  # one chunk: read it once and keep it for both the selection and the merge
        start, stop = bounds[0]
        cached = [read(i, start, stop) for i in range(n_models + 1)]

        def read(i, start, stop, _cached=cached):  # noqa: F811 (same signature, served from memory)
            return _cached[i]

    # Per model: the k-th largest |d_j| (as bits) and how many entries equal to it are kept. k = numel keeps
    # everything and k = 0 nothing, neither needs a selection pass.
    select = 0 < k < numel
    cuts: list[tuple[int, int]] = []
    if select:
        nbits = 64 if read(0, 0, 1).dtype == torch.float64 else 32
        for j in range(1, n_models + 1):

            def passes(j=j):
                for start, stop in bounds:
                    yield _magnitude_bits(read(j, start, stop) - read(0, start, stop))

            cuts.append(kth_largest(passes, k, nbits))
    ties_left = [ties for _, ties in cuts]

    w = torch.tensor(weights, dtype=torch.float64)
    for start, stop in bounds:
        base = read(0, start, stop)
        weighted = []
        for j in range(n_models):
            delta = read(j + 1, start, stop) - base
            if k == 0:
                delta = torch.zeros_like(delta)
            elif select:
                keep, ties_left[j] = _top_k_mask(_magnitude_bits(delta), cuts[j][0], ties_left[j])
                delta = torch.where(keep, delta, torch.zeros((), dtype=delta.dtype))
            weighted.append(delta * weights[j])
        weighted = torch.stack(weighted)  # [n_models, chunk]
        elected = torch.where(weighted.sum(0) >= 0, 1.0, -1.0).to(weighted.dtype)
        agree = torch.sign(weighted) == elected
        merged = torch.where(agree, weighted, torch.zeros((), dtype=weighted.dtype)).sum(0)
        divisor = (agree * w.to(weighted.dtype)[:, None]).sum(0)
        divisor = torch.where(divisor == 0, torch.ones((), dtype=divisor.dtype), divisor)
        yield base + scale * (merged / divisor)


def linear_chunks(
    read: Reader, n_models: int, bounds: Sequence[tuple[int, int]], *, weights: Sequence[float]
):
    """Weighted average of inputs 0..n_models-1, chunk by chunk: ``sum_j w_j m_j / sum_j w_j``."""
    total = sum(weights)
    for start, stop in bounds:
        acc = read(0, start, stop) * (weights[0] / total)
        for j in range(1, n_models):
            acc = acc + read(j, start, stop) * (weights[j] / total)
        yield acc


# ------------------------------------------------------------------------------------------ in-memory versions


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype the arithmetic runs in: float64 if any input is float64, else float32."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _merge_state_dicts(
    inputs: Sequence[Mapping[str, Tensor]], make_chunks, chunk_numel: int
) -> dict[str, Tensor]:
    reference = inputs[0]
    for i, sd in enumerate(inputs[1:], start=1):
        if set(sd) != set(reference):
            diff = sorted(set(sd) ^ set(reference))
            raise ValueError(
                f"input {i} does not have the same tensors as input 0; differing keys: {diff[:5]}"
            )
    out = {}
    for key, ref in reference.items():
        tensors = [sd[key] for sd in inputs]
        for i, t in enumerate(tensors):
            if t.shape != ref.shape:
                raise ValueError(f"{key}: shape {list(t.shape)} in input {i} != {list(ref.shape)} in input 0")
        if not ref.is_floating_point():
            for i, t in enumerate(tensors):
                if not torch.equal(t, ref):
                    raise ValueError(f"{key}: non-float tensor differs between input 0 and input {i}")
            out[key] = ref.clone()
            continue
        dtype = compute_dtype(*(t.dtype for t in tensors))
        flat = [t.reshape(-1) for t in tensors]

        def read(i, start, stop, flat=flat, dtype=dtype):
            return flat[i][start:stop].to(dtype)

        row = ref.shape[-1] if ref.dim() > 1 else 1
        bounds = chunk_bounds(ref.numel(), chunk_numel, row)
        chunks = list(make_chunks(read, len(tensors), bounds))
        out[key] = torch.cat(chunks).reshape(ref.shape).to(ref.dtype)
    return out


def ties_merge(
    base: Mapping[str, Tensor],
    models: Sequence[Mapping[str, Tensor]],
    *,
    density: float,
    weights: Sequence[float] | None = None,
    scale: float = 1.0,
    chunk_numel: int = DEFAULT_CHUNK_NUMEL,
) -> dict[str, Tensor]:
    """TIES-merge ``models`` onto ``base`` (state dicts); the result has the base's dtypes. See the module docstring."""
    if not models:
        raise ValueError("TIES needs at least one model besides the base")
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    weights = check_weights(weights, len(models))

    def make(read, n_inputs, bounds):
        return ties_chunks(read, n_inputs - 1, bounds, density=density, weights=weights, scale=scale)

    return _merge_state_dicts([base, *models], make, chunk_numel)


def linear_merge(
    models: Sequence[Mapping[str, Tensor]],
    weights: Sequence[float] | None = None,
    *,
    chunk_numel: int = DEFAULT_CHUNK_NUMEL,
) -> dict[str, Tensor]:
    """Weighted average of state dicts (equal weights by default); the result has the first model's dtypes."""
    if not models:
        raise ValueError("a linear merge needs at least one model")
    weights = check_weights(weights, len(models))

    def make(read, n_inputs, bounds):
        return linear_chunks(read, n_inputs, bounds, weights=weights)

    return _merge_state_dicts(list(models), make, chunk_numel)


def ema_merge(
    checkpoints: Sequence[Mapping[str, Tensor]], *, beta: float, chunk_numel: int = DEFAULT_CHUNK_NUMEL
) -> dict[str, Tensor]:
    """Exponentially weighted average of ``checkpoints`` (oldest first): weights ``beta^(N-k)``, normalised."""
    return linear_merge(checkpoints, ema_weights(len(checkpoints), beta), chunk_numel=chunk_numel)
