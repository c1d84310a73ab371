"""MLM corruption (BERT's 80/10/10) and the within-phase mask-ratio schedule.

:func:`mask_tokens` picks each non-special position independently with probability ``mask_ratio`` (Bernoulli,
as BERT, ModernBERT and Hugging Face's MLM collator do, so the expected masked fraction is exactly the ratio).
Of the picked positions, 80% become ``mask_token_id``, 10% a token drawn uniformly from the non-special ids of
the vocabulary, and 10% keep their id. ``labels`` hold the original id at picked positions and ``-100``
elsewhere, so the loss sees exactly the picked positions. Special ids (pad, eos, bos, unk, mask, ...) are never
picked and never drawn as a random replacement.

Determinism: pass a seeded ``torch.Generator``; :func:`mask_generator` derives one from
``(seed, epoch, rank, position)`` so a batch's masks depend only on where it sits in the run, are fresh every
epoch, and are reproduced exactly after a resume.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import torch

from mmbert_train.constants import IGNORE_INDEX, MASK_ID, SPECIAL_IDS

# defaults of the masking functions: Gemma 2 / mmBERT's special ids (mmbert_train.constants)
DEFAULT_SPECIAL_IDS: tuple[int, ...] = SPECIAL_IDS
DEFAULT_MASK_TOKEN_ID = MASK_ID

# Fractions of the picked positions (BERT): replaced by <mask>, replaced by a random token; the rest stay.
MASK_TOKEN_FRACTION = 0.8
RANDOM_TOKEN_FRACTION = 0.1


def mask_ratio_at(progress: float, start: float, end: float | None = None) -> float:
    """The mask ratio ``progress`` of the way through a phase.

    ``ratio(p) = start + (end - start) * clamp(p, 0, 1)`` with ``p = tokens seen in the phase / phase tokens``;
    ``end = None`` keeps the ratio constant at ``start``.
    """
    if end is None:
        return start
    p = min(1.0, max(0.0, progress))
    return start + (end - start) * p


def mask_generator(seed: int, *position: int) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and a position tuple, e.g. ``(epoch, rank, batch_in_epoch)``.

    The 64-bit seed is a hash of the whole tuple, so neighbouring positions get unrelated streams.
    """
    key = ",".join(str(int(v)) for v in (seed, *position)).encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return generator


def _sorted_specials(special_ids: Iterable[int], vocab_size: int) -> np.ndarray:
    return np.array(sorted({int(i) for i in special_ids if 0 <= int(i) < vocab_size}), dtype=np.int64)


def _numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A numpy generator seeded by one draw from ``generator`` (or torch's global RNG when None).

    The corruption itself runs in numpy: on the small tensors of a batch it is several times faster than
    torch's CPU kernels and needs no intra-op thread pool (which a busy training process would contend).
    """
    seed = torch.randint(0, 2**62, (1,), generator=generator, dtype=torch.int64).item()
    return np.random.default_rng(seed)


def _draw_non_special(rng: np.random.Generator, n: int, vocab_size: int, specials: np.ndarray) -> np.ndarray:
    n_allowed = vocab_size - len(specials)
    if n_allowed <= 0:
        raise ValueError(f"vocab_size {vocab_size} leaves no non-special token to draw")
    r = rng.integers(0, n_allowed, size=n, dtype=np.int64)
    if len(specials) == 0:
        return r
    thresholds = specials - np.arange(len(specials), dtype=np.int64)
    return r + np.searchsorted(thresholds, r, side="right")


def random_non_special(
    shape: torch.Size | tuple[int, ...],
    *,
    vocab_size: int,
    special_ids: Iterable[int],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Ids drawn uniformly from ``[0, vocab_size)`` minus ``special_ids`` (int64 tensor of ``shape``).

    Draw ``r`` uniformly from ``[0, vocab_size - k)`` (k = number of specials) and shift it past every special
    id at or below it: with the specials sorted as ``s_0 < s_1 < ...``, the j-th special is skipped when
    ``r >= s_j - j``, so ``id = r + #{j : s_j - j <= r}``. Every allowed id is hit by exactly one ``r``.
    """
    size = int(np.prod(tuple(shape)))
    draws = _draw_non_special(
        _numpy_rng(generator), size, vocab_size, _sorted_specials(special_ids, vocab_size)
    )
    return torch.from_numpy(draws.reshape(tuple(shape)))


def special_mask(input_ids: torch.Tensor, special_ids: Iterable[int]) -> torch.Tensor:
    """Boolean tensor, True where ``input_ids`` holds one of ``special_ids``."""
    specials = np.array(sorted({int(i) for i in special_ids}), dtype=np.int64)
    return torch.from_numpy(np.isin(input_ids.cpu().numpy(), specials))


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_ratio: float,
    mask_token_id: int,
    vocab_size: int,
    special_ids: Iterable[int],
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MLM-corrupt ``input_ids`` (any shape, integer dtype); returns ``(inputs, labels)`` as int64.

    Each non-special position is picked with probability ``mask_ratio``; picked positions become
    ``mask_token_id`` (80%), a random non-special id (10%) or stay (10%). ``labels`` = original id where
    picked, ``-100`` elsewhere. The input tensor is not modified; the outputs are on its device.
    """
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
    special_ids = tuple(special_ids)
    if mask_token_id not in special_ids:
        special_ids = (*special_ids, mask_token_id)
    rng = _numpy_rng(generator)
    original = input_ids.detach().cpu().numpy().astype(np.int64, copy=True)
    specials = _sorted_specials(special_ids, max(vocab_size, int(original.max(initial=0)) + 1))

    # One uniform draw per position decides both "picked" and which of the three corruptions it gets:
    # u < ratio picks it; u / ratio then is uniform in [0, 1) and splits 80 / 10 / 10.
    u = rng.random(original.shape, dtype=np.float32)
    picked = u < mask_ratio
    picked &= ~np.isin(original, specials)
    threshold_mask = np.float32(mask_ratio * MASK_TOKEN_FRACTION)
    threshold_random = np.float32(mask_ratio * (MASK_TOKEN_FRACTION + RANDOM_TOKEN_FRACTION))
    to_mask = picked & (u < threshold_mask)
    to_random = picked & (u >= threshold_mask) & (u < threshold_random)

    labels = np.where(picked, original, IGNORE_INDEX)
    inputs = original
    inputs[to_mask] = mask_token_id
    n_random = int(to_random.sum())
    if n_random:
        inputs[to_random] = _draw_non_special(
            rng, n_random, vocab_size, _sorted_specials(special_ids, vocab_size)
        )
    device = input_ids.device
    return torch.from_numpy(inputs).to(device), torch.from_numpy(labels).to(device)
