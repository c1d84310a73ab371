"""Cutting and best-fit packing: row bounds, no split pieces, every token kept, consistent doc_lens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmbert_train.data.packing import (
    best_fit_rows,
    collate_rows,
    cu_seqlens_from_doc_lens,
    cut_sample,
    pack_block,
    packing_efficiency,
)


def _doc(n: int, start: int) -> np.ndarray:
    """<bos> body <eos> with distinct body ids so tokens can be traced."""
    body = np.arange(start, start + n - 2, dtype=np.uint32)
    return np.concatenate([[2], body, [1]]).astype(np.uint32)


def test_cut_sample_framing():
    doc = _doc(25, 100)
    pieces = cut_sample(doc, 10)
    assert [len(p) for p in pieces] == [10, 10, 5]
    assert np.array_equal(np.concatenate(pieces), doc)  # consecutive, nothing lost or added
    assert pieces[0][0] == 2 and pieces[-1][-1] == 1  # bos only on the first, eos only on the last
    assert 2 not in pieces[1] and 1 not in pieces[1]
    assert cut_sample(doc, 25)[0] is doc and len(cut_sample(doc, 25)) == 1
    assert [len(p) for p in cut_sample(_doc(20, 0), 10)] == [10, 10]


def test_best_fit_is_best_fit():
    # decreasing order: 6 -> row0 (free 4), 5 -> row1 (free 5), 4 -> row0 (exact fit, not row1), 3 -> row1
    rows = best_fit_rows([3, 6, 4, 5], capacity=10)
    assert rows == [[1, 2], [3, 0]]
    with pytest.raises(ValueError, match="item 1 has length 11"):
        best_fit_rows([3, 11], capacity=10)


@pytest.mark.parametrize("max_seq_len", [16, 64, 1024])
def test_pack_block_invariants(max_seq_len):
    rng = np.random.default_rng(max_seq_len)
    lengths = np.clip(rng.lognormal(np.log(max_seq_len / 3), 1.0, size=300).astype(int), 2, 5 * max_seq_len)
    docs, start = [], 10
    for n in lengths:
        docs.append(_doc(int(n), start))
        start += int(n)
    rows = pack_block(docs, max_seq_len)
    batch = collate_rows(rows, max_seq_len, pad_id=0)
    ids, attn, doc_lens = batch["input_ids"], batch["attention_mask"], batch["doc_lens"]
    assert ids.dtype == torch.int64 and doc_lens.dtype == torch.int32
    assert ids.shape == attn.shape == (len(rows), max_seq_len)
    # rows never exceed max_seq_len and doc_lens agree with the mask: sum = real tokens, real tokens first
    assert (doc_lens.sum(1) == attn.sum(1)).all()
    assert (doc_lens.sum(1) <= max_seq_len).all()
    for r in range(len(rows)):
        n = int(attn[r].sum())
        assert attn[r, :n].all() and not attn[r, n:].any()
        assert (ids[r, n:] == 0).all()
        nz = doc_lens[r][doc_lens[r] > 0]
        assert len(nz) == len(rows[r]) and (doc_lens[r, len(nz) :] == 0).all()
    # every piece sits whole in one row, and every token is kept exactly once
    expected_pieces = sorted(tuple(p.tolist()) for d in docs for p in cut_sample(d, max_seq_len))
    got_pieces = []
    for r in range(len(rows)):
        offset = 0
        for n in doc_lens[r][doc_lens[r] > 0].tolist():
            got_pieces.append(tuple(ids[r, offset : offset + n].tolist()))
            offset += n
    assert sorted(got_pieces) == expected_pieces
    assert int(attn.sum()) == int(lengths.sum())
    # best fit leaves little room: at most one row less than half full
    assert (attn.sum(1) < max_seq_len // 2).sum() <= 1
    assert packing_efficiency(attn) == pytest.approx(int(lengths.sum()) / (len(rows) * max_seq_len))


def test_cu_seqlens_match_flat_tokens():
    rows = pack_block([_doc(5, 10), _doc(7, 20), _doc(3, 30), _doc(9, 40)], 10)
    batch = collate_rows(rows, 10)
    flat = batch["input_ids"][batch["attention_mask"].bool()]
    cu = cu_seqlens_from_doc_lens(batch["doc_lens"])
    assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == len(flat)
    docs = [flat[a:b].tolist() for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
    assert sorted(map(len, docs)) == [3, 5, 7, 9]
    assert all(d[0] == 2 and d[-1] == 1 for d in docs)


def test_empty_samples_are_skipped_and_efficiency():
    rows = pack_block([np.array([], dtype=np.uint32), _doc(4, 5)], 8)
    assert len(rows) == 1
    batch = collate_rows(rows, 8)
    assert packing_efficiency(batch["attention_mask"]) == 0.5


def test_efficiency_is_a_python_float_whatever_numpy_returns(monkeypatch):
    """numpy >= 2.3's count_nonzero returns a numpy integer; a numpy float in the batch would reach Composer as
    a 0-dim tensor through torch's DataLoader (and the microbatch split would try to slice it)."""
    import mmbert_train.data.packing as packing

    real = np.count_nonzero
    monkeypatch.setattr(packing.np, "count_nonzero", lambda a: np.intp(real(a)))
    value = packing_efficiency(torch.tensor([[1, 1, 0, 0]]))
    assert type(value) is float and value == 0.5
