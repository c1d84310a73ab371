"""MLM masking: ratio, 80/10/10 split, special tokens, labels, determinism, schedule."""

from __future__ import annotations

import pytest
import torch

from mmbert_train.data.masking import (
    IGNORE_INDEX,
    mask_generator,
    mask_ratio_at,
    mask_tokens,
    random_non_special,
)

SPECIALS = (0, 1, 2, 3, 4)
MASK = 4
VOCAB = 1000


def _rows(n_rows: int = 64, length: int = 2048, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n_rows, length), generator=g)
    # sprinkle specials: bos/eos at document boundaries and pad at row ends, as packed rows have them
    ids[:, 0] = 2
    ids[:, 100::300] = 1
    ids[:, 101::300] = 2
    ids[:, -50:] = 0
    return ids


@pytest.mark.parametrize("ratio", [0.3, 0.15, 0.05])
def test_masked_fraction_and_80_10_10_split(ratio):
    ids = _rows()
    maskable = ~torch.isin(ids, torch.tensor(SPECIALS))
    assert int(maskable.sum()) >= 100_000
    inputs, labels = mask_tokens(
        ids,
        mask_ratio=ratio,
        mask_token_id=MASK,
        vocab_size=VOCAB,
        special_ids=SPECIALS,
        generator=torch.Generator().manual_seed(1),
    )
    picked = labels != IGNORE_INDEX
    assert abs(picked.sum().item() / maskable.sum().item() - ratio) < 0.01
    n = picked.sum().item()
    as_mask = (picked & (inputs == MASK)).sum().item() / n
    unchanged = (picked & (inputs == ids)).sum().item() / n
    random = (picked & (inputs != MASK) & (inputs != ids)).sum().item() / n
    assert abs(as_mask - 0.8) < 0.02
    # a random draw equal to the original counts as "unchanged": 1/995 of the 10%, far inside the tolerance
    assert abs(unchanged - 0.1) < 0.02
    assert abs(random - 0.1) < 0.02


def test_labels_and_specials():
    ids = _rows(16, 1024, seed=3)
    inputs, labels = mask_tokens(
        ids,
        mask_ratio=0.5,
        mask_token_id=MASK,
        vocab_size=VOCAB,
        special_ids=SPECIALS,
        generator=torch.Generator().manual_seed(2),
    )
    assert inputs.dtype == labels.dtype == torch.int64 and inputs.shape == ids.shape
    picked = labels != IGNORE_INDEX
    special = torch.isin(ids, torch.tensor(SPECIALS))
    # labels: the original id exactly where picked
    assert torch.equal(labels[picked], ids[picked])
    # unpicked positions are untouched, specials are never picked and keep their id
    assert torch.equal(inputs[~picked], ids[~picked])
    assert not (picked & special).any()
    assert torch.equal(inputs[special], ids[special])
    # random replacements are never special (the mask token only where it was chosen as <mask>)
    replaced = picked & (inputs != ids) & (inputs != MASK)
    assert replaced.sum() > 0
    assert not torch.isin(inputs[replaced], torch.tensor(SPECIALS)).any()
    # the input tensor is not modified in place
    assert torch.equal(ids, _rows(16, 1024, seed=3))


def test_random_replacement_covers_exactly_the_non_special_ids():
    specials = (0, 1, 2, 7, 9, 19)
    draws = random_non_special(
        (200_000,), vocab_size=20, special_ids=specials, generator=torch.Generator().manual_seed(0)
    )
    assert set(draws.tolist()) == set(range(20)) - set(specials)
    counts = torch.bincount(draws, minlength=20).float()
    allowed = counts[[i for i in range(20) if i not in specials]]
    assert (allowed / allowed.mean() - 1).abs().max() < 0.05  # uniform


def test_mask_token_is_never_picked_even_if_not_listed():
    ids = torch.full((4, 1000), MASK)
    ids[:, ::2] = 10
    _, labels = mask_tokens(ids, mask_ratio=0.9, mask_token_id=MASK, vocab_size=VOCAB, special_ids=(0,))
    assert not (labels == MASK).any()


def test_deterministic_given_position_and_fresh_per_epoch():
    ids = _rows(4, 512)

    def run(*position):
        return mask_tokens(
            ids,
            mask_ratio=0.3,
            mask_token_id=MASK,
            vocab_size=VOCAB,
            special_ids=SPECIALS,
            generator=mask_generator(21, *position),
        )

    a, b = run(0, 0, 5), run(0, 0, 5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = run(1, 0, 5)  # next epoch, same position
    assert not torch.equal(a[1], c[1])
    d = run(0, 1, 5)  # other rank
    assert not torch.equal(a[1], d[1])


def test_zero_and_bad_ratio():
    ids = _rows(2, 128)
    inputs, labels = mask_tokens(
        ids, mask_ratio=0.0, mask_token_id=MASK, vocab_size=VOCAB, special_ids=SPECIALS
    )
    assert torch.equal(inputs, ids) and (labels == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match="mask_ratio"):
        mask_tokens(ids, mask_ratio=1.5, mask_token_id=MASK, vocab_size=VOCAB, special_ids=SPECIALS)


def test_mask_ratio_schedule():
    assert mask_ratio_at(0.3, 0.3) == 0.3
    assert mask_ratio_at(0.0, 0.3, 0.15) == pytest.approx(0.3)
    assert mask_ratio_at(0.5, 0.3, 0.15) == pytest.approx(0.225)
    assert mask_ratio_at(1.0, 0.3, 0.15) == pytest.approx(0.15)
    assert mask_ratio_at(7.0, 0.3, 0.15) == pytest.approx(0.15)  # clamped after the phase end
    assert mask_ratio_at(-1.0, 0.3, 0.15) == pytest.approx(0.3)
