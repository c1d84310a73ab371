"""Held-out evaluation dataloaders: fixed masks (same as `mmbert eval-mlm`), per language and per group."""

from __future__ import annotations

import collections

import pytest
import torch
from test_loader import LANGS, VOCAB, data_config, write_corpus

from mmbert_train.data.evaluation import build_eval_dataloaders, pack_masked_pieces
from mmbert_train.data.spec import EvalDataConfig
from mmbert_train.evaluate import load_heldout


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("eval_corpus"), heldout=30)


def _cfg(corpus, **eval_kw):
    eval_cfg = EvalDataConfig(mask_ratio=0.15, seed=99, max_seq_len=64, batch_size=4, **eval_kw)
    return data_config(corpus, max_seq_len=128, eval=eval_cfg)


def _pieces(spec):
    """(inputs, labels) documents of every batch, as tuples."""
    out = []
    for batch in spec.dataloader:
        assert set(batch) == {"input_ids", "labels", "attention_mask", "doc_lens"}
        assert (batch["doc_lens"].sum(1) == batch["attention_mask"].sum(1)).all()
        for r in range(batch["input_ids"].shape[0]):
            offset = 0
            for n in batch["doc_lens"][r][batch["doc_lens"][r] > 0].tolist():
                out.append(
                    (tuple(batch["input_ids"][r, offset : offset + n].tolist()),
                     tuple(batch["labels"][r, offset : offset + n].tolist()))
                )  # fmt: skip
                offset += n
    return out


def test_labels_languages_and_groups(corpus, caplog):
    cfg = _cfg(corpus, languages=["fra", "deu", "ita"], groups={"pretrain": ["fra", "swh"], "late": ["ita"]})
    loaders = build_eval_dataloaders(cfg, vocab_size=VOCAB)
    assert sorted(loaders) == ["heldout/deu", "heldout/fra", "heldout/group/pretrain"]
    assert "ita" in caplog.text  # no held-out data: skipped with a warning, not an error
    fra = _pieces(loaders["heldout/fra"])
    group = _pieces(loaders["heldout/group/pretrain"])
    assert collections.Counter(fra) <= collections.Counter(group)  # the group holds fra's rows and swh's
    swh_rows = collections.Counter(group) - collections.Counter(fra)
    assert all(3000 <= t < 4000 for inputs, labels in swh_rows for t in labels if t != -100)
    # every row of the group is a contract-3 batch row of at most max_seq_len
    for batch in loaders["heldout/group/pretrain"].dataloader:
        assert batch["input_ids"].shape[1] == 64 and batch["input_ids"].shape[0] <= 4


def test_same_masked_tokens_as_eval_mlm_whatever_the_training_ratio(corpus):
    cfg = _cfg(corpus, languages=list(LANGS))
    loaders = build_eval_dataloaders(cfg, vocab_size=VOCAB)
    ref = load_heldout(corpus, list(LANGS), mask_ratio=0.15, seed=99, max_seq_len=64,
                       max_samples_per_language=64, vocab_size=VOCAB)  # fmt: skip
    for lang in LANGS:
        expected = [
            (tuple(p.input_ids.tolist()), tuple(p.labels.tolist())) for p in ref.languages[lang].pieces
        ]
        assert collections.Counter(_pieces(loaders[f"heldout/{lang}"])) == collections.Counter(expected)
    # another phase (other training mask ratio and sequence length) sees the very same batches
    other = data_config(corpus, max_seq_len=256, mask_ratio=0.05, eval=cfg.eval)
    again = build_eval_dataloaders(other, vocab_size=VOCAB)
    for label in loaders:
        for a, b in zip(loaders[label].dataloader, again[label].dataloader):
            assert all(torch.equal(a[k], b[k]) for k in a)
    # the fixed ratio: masked share of the maskable held-out tokens
    picked = maskable = 0
    for batch in loaders["heldout/deu"].dataloader:
        picked += int((batch["labels"] != -100).sum())
        original = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
        maskable += int(((original > 4) & batch["attention_mask"].bool()).sum())
    assert abs(picked / maskable - 0.15) < 0.03


def test_pack_masked_pieces_keeps_pairs_aligned():
    pieces = [(torch.arange(n) + 10, torch.where(torch.arange(n) % 2 == 0, torch.arange(n) + 10, -100))
              for n in (5, 3, 7, 2)]  # fmt: skip
    rows = pack_masked_pieces(pieces, 8)
    for r in rows:
        assert int(r["attention_mask"].sum()) == int(r["doc_lens"].sum()) <= 8
    got = []
    for r in rows:
        offset = 0
        for n in r["doc_lens"].tolist():
            got.append(
                (r["input_ids"][offset : offset + n].tolist(), r["labels"][offset : offset + n].tolist())
            )
            offset += n
        assert (r["labels"][offset:] == -100).all()
    assert sorted(got) == sorted((a.tolist(), b.tolist()) for a, b in pieces)
