"""The phase loader: batch format, every token delivered once, planned token shares, exact resumption."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmbert_train.data.masking import IGNORE_INDEX
from mmbert_train.processes import pythonpath_with

BOS, EOS = 2, 1
VOCAB = 8000
# language -> (samples, mean sample length, first token id); ids of a language live in [base, base + 1000)
LANGS = {"fra": (300, 60, 1000), "deu": (200, 150, 2000), "swh": (120, 30, 3000)}
TESTS_DIR = Path(__file__).parent


def _lengths(rng, n, mean, max_len):
    return np.clip(rng.lognormal(np.log(mean), 0.6, size=n).astype(int), 3, max_len)


def _doc(rng, n, base):
    return np.concatenate([[BOS], rng.integers(base, base + 1000, size=n - 2), [EOS]]).astype(np.uint32)


def write_corpus(root: Path, langs=LANGS, source="web", sample_max_len=400, heldout=20, seed=0) -> Path:
    """MDS folders ``root/<source>/<lang>/`` (+ ``heldout/``) with random tokens, and ``root/manifest.json``."""
    from streaming import MDSWriter

    rng = np.random.default_rng(seed)
    counts = {}
    for lang, (n, mean, base) in langs.items():
        tokens = 0
        for sub, count in (("", n), ("heldout", heldout)):
            out = root / source / lang / sub
            with MDSWriter(out=str(out), columns={"input_ids": "ndarray:uint32"}, compression="zstd",
                           size_limit=1 << 14) as writer:  # fmt: skip
                for length in _lengths(rng, count, mean, sample_max_len):
                    doc = _doc(rng, int(length), base)
                    writer.write({"input_ids": doc})
                    tokens += len(doc) if not sub else 0
        counts[lang] = {"documents": n + heldout, "samples": n, "tokens": tokens, "skipped": 0,
                        "heldout_documents": heldout}  # fmt: skip
    manifest = {"tokenizer": "test", "max_seq_len": sample_max_len, "sources": {source: counts}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def read_corpus(root: Path, lang: str, source="web", sub="") -> list[np.ndarray]:
    from streaming.base.local import LocalDataset

    ds = LocalDataset(str(root / source / lang / sub))
    return [np.asarray(ds[i]["input_ids"]) for i in range(len(ds))]


def data_config(root: Path, **overrides):
    from mmbert_train.data.spec import DataConfig, SourceConfig

    kwargs = dict(root=str(root), languages=list(LANGS), tau=0.5, sources={"web": SourceConfig()},
                  max_seq_len=128, mask_ratio=0.3, num_workers=0, shuffle_seed=7)  # fmt: skip
    kwargs.update(overrides)
    return DataConfig(**kwargs)


def originals(batch) -> torch.Tensor:
    """Undo masking: labels hold the original id where a position was picked."""
    return torch.where(batch["labels"] != IGNORE_INDEX, batch["labels"], batch["input_ids"])


def documents(batch) -> list[tuple[int, ...]]:
    ids = originals(batch)
    docs = []
    for r in range(ids.shape[0]):
        offset = 0
        for n in batch["doc_lens"][r][batch["doc_lens"][r] > 0].tolist():
            docs.append(tuple(ids[r, offset : offset + n].tolist()))
            offset += n
    return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _spec(corpus, **kw):
    from mmbert_train.train.dataloader import build_train_dataloader

    cfg_kw = {
        k: kw.pop(k)
        for k in list(kw)
        if k in ("max_seq_len", "mask_ratio", "num_workers", "batch_warmup", "tau")
    }
    return build_train_dataloader(data_config(corpus, **cfg_kw), vocab_size=VOCAB, clean_shared_memory=False,
                                  rank=0, world_size=1, **kw)  # fmt: skip


def plain_streams(root):
    """One stream per language, no proportions: an epoch reads every sample exactly once."""
    from streaming import Stream

    return [Stream(local=str(root / "web" / lang)) for lang in LANGS]


def test_epoch_batches_format_and_every_token_once(corpus):
    spec = _spec(corpus, global_batch_size=8, block_samples=32, streams=plain_streams(corpus))
    batches = list(spec.dataloader)
    dataset = spec.dataloader.dataset
    assert len(batches) > 5
    pieces = []
    for b in batches:
        assert set(b) == {
            "input_ids",
            "labels",
            "attention_mask",
            "doc_lens",
            "packing_efficiency",
            "mask_ratio",
        }
        assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape == (8, 128)
        assert b["input_ids"].dtype == b["labels"].dtype == torch.int64 and b["doc_lens"].dtype == torch.int32
        assert (b["doc_lens"].sum(1) == b["attention_mask"].sum(1)).all()
        assert (b["labels"][b["attention_mask"] == 0] == IGNORE_INDEX).all()
        assert b["packing_efficiency"] == pytest.approx(float(b["attention_mask"].float().mean()))
        assert spec.get_num_samples_in_batch(b) == 8
        assert spec.get_num_tokens_in_batch(b) == int(b["attention_mask"].sum())
        assert spec.get_num_tokens_in_batch(b, "loss_generating") == int((b["labels"] != -100).sum())
        pieces += documents(b)
    # every delivered piece is a consecutive cut of a raw sample, and no piece repeats
    from mmbert_train.data.packing import cut_sample

    raw = [s for lang in LANGS for s in read_corpus(corpus, lang)]
    all_pieces = collections.Counter(tuple(p.tolist()) for s in raw for p in cut_sample(s, 128))
    assert not collections.Counter(pieces) - all_pieces  # a sub-multiset: nothing invented or repeated
    # only the rows left in the buffer at the epoch end (less than one batch) are not delivered
    total = sum(len(s) for s in raw)
    delivered = sum(map(len, pieces))
    assert total - 8 * 128 < delivered <= total
    # masked share of the maskable tokens
    picked = sum(int((b["labels"] != -100).sum()) for b in batches)
    maskable = sum(int((b["attention_mask"].bool() & (originals(b) > 4)).sum()) for b in batches)
    assert abs(picked / maskable - 0.3) < 0.02
    assert dataset.epoch == 1 and dataset.batch_in_epoch == 0


def test_split_keeps_batch_aligned(corpus):
    spec = _spec(corpus, global_batch_size=8, block_samples=32)
    batch = next(iter(spec.dataloader))
    micro = spec.split_batch(batch, 3)
    assert [m["input_ids"].shape[0] for m in micro] == [3, 3, 2]
    for key in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(torch.cat([m[key] for m in micro]), batch[key])
    for i, m in enumerate(micro):
        rows = slice(3 * i, 3 * i + m["input_ids"].shape[0])
        width = m["doc_lens"].shape[1]
        assert torch.equal(m["doc_lens"], batch["doc_lens"][rows, :width])
        assert (batch["doc_lens"][rows, width:] == 0).all()
        assert m["packing_efficiency"] == batch["packing_efficiency"]
    # A 0-dim tensor (a scalar metric that torch's DataLoader converted) goes whole to every microbatch.
    batch = dict(batch, scalar=torch.tensor(0.25))
    assert [m["scalar"].item() for m in spec.split_batch(batch, 3)] == [0.25, 0.25, 0.25]


def test_delivered_token_shares_match_plan(tmp_path):
    """Languages with 30 / 60 / 150 tokens per sample: Streaming draws samples, the plan is in tokens."""
    from mmbert_train.data.sampling import build_phase_plan

    root = write_corpus(tmp_path, sample_max_len=120)
    cfg = data_config(root, tau=0.3, max_seq_len=256)
    plan = build_phase_plan(cfg)
    planned = {e.language: e.token_share for e in plan.entries}
    spec = _spec(root, global_batch_size=16, block_samples=64, phase_tokens=600_000, max_seq_len=256, tau=0.3)
    got = dict.fromkeys(LANGS, 0)
    for batch in spec.dataloader:
        for doc in documents(batch):  # bos/eos count toward the document's language, as in the plan
            body = [t for t in doc if t > 4]
            if body:
                got[next(lang for lang, (_, _, base) in LANGS.items() if base <= body[0] < base + 1000)] += (
                    len(doc)
                )
    total = sum(got.values())
    assert total > 400_000
    for lang in LANGS:
        assert abs(got[lang] / total - planned[lang]) < 0.01, (got, planned)
    assert max(planned.values()) - min(planned.values()) > 0.05  # the shares really differ


RUN_LOADER = """
import json, os, sys, torch
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_loader import data_config, plain_streams, VOCAB
from mmbert_train.train.dataloader import build_train_dataloader
from mmbert_train.data.spec import BatchWarmupConfig

if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    from composer.devices import DeviceCPU
    from composer.utils import dist
    dist.initialize_dist(DeviceCPU())

mode, root, out, n_before, n_after = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
cfg = data_config(root, num_workers=2, max_seq_len=64,
                  batch_warmup=BatchWarmupConfig(start_batch_size=2, tokens=64 * 120))
spec = build_train_dataloader(cfg, global_batch_size={global_batch}, vocab_size=VOCAB, block_samples=8,
                              phase_tokens=2_000_000, clean_shared_memory=False,
                              streams=plain_streams(root) if mode == "epoch" else None)
dataset = spec.dataloader.dataset
if mode == "resume":
    dataset.load_state_dict(json.loads((out / "state.json").read_text()))
batches, it = [], iter(spec.dataloader)
if mode == "full":
    for _ in range(n_before):
        next(it)
    state = dataset.state_dict(dataset.rows_in_epoch, True)  # every rank calls it, as Composer does
    if dataset.rank == 0:
        (out / "state.json").write_text(json.dumps(state))
        (out / "buffered.json").write_text(json.dumps(dataset.buffered_rows))
if mode == "epoch":
    batches = list(it)
else:
    for _ in range(n_after):
        batches.append(next(it))
torch.save(batches, out / f"{{mode}}-{{dataset.rank}}.pt")
(out / f"{{mode}}-{{dataset.rank}}.json").write_text(json.dumps(dataset.raw_samples_before_first_batch))
"""


def run_loader_script(tmp_path, corpus, mode, n_before, n_after, global_batch=8, launcher=()):
    script = tmp_path / "run_loader.py"
    script.write_text(RUN_LOADER.format(tests=str(TESTS_DIR), global_batch=global_batch))
    env = dict(os.environ, PYTHONPATH=pythonpath_with(TESTS_DIR.parent))
    cmd = [*launcher, str(script)] if launcher else [sys.executable, str(script)]
    env.pop("WORLD_SIZE", None)
    result = subprocess.run(
        [*cmd, mode, str(corpus), str(tmp_path), str(n_before), str(n_after)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if torch.is_tensor(x[key]):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


RUN_TRAINER = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from pathlib import Path
from composer import Callback, Event, Trainer
from composer.models import ComposerModel
from test_loader import data_config, VOCAB
from mmbert_train.train.dataloader import build_train_dataloader
from mmbert_train.data.spec import BatchWarmupConfig

mode, root, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])


class Toy(ComposerModel):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, 1)

    def forward(self, batch):
        return self.emb(batch["input_ids"]).mean()

    def loss(self, outputs, batch):
        return outputs


class Record(Callback):
    def __init__(self):
        self.batches, self.info = [], {{}}

    def run_event(self, event, state, logger):
        if event not in (Event.AFTER_DATALOADER, Event.BATCH_CHECKPOINT):
            return
        dataset = state.train_dataloader.dataset
        if event == Event.AFTER_DATALOADER:
            if not self.batches:
                self.info["raw_read"] = dataset.raw_samples_before_first_batch
            self.batches.append(state.batch)
        if event == Event.BATCH_CHECKPOINT and int(state.timestamp.batch) == 20:
            self.info["buffered_at_checkpoint"] = dataset.buffered_rows


cfg = data_config(root, num_workers=2, max_seq_len=64,
                  batch_warmup=BatchWarmupConfig(start_batch_size=2, tokens=64 * 120))
spec = build_train_dataloader(cfg, global_batch_size=8, vocab_size=VOCAB, block_samples=8, device_microbatch_size=2,
                              phase_tokens=2_000_000, clean_shared_memory=False)
record = Record()
model = Toy()
trainer = Trainer(
    model=model, train_dataloader=spec, max_duration="26ba", device="cpu", device_train_microbatch_size=2,
    optimizers=torch.optim.SGD(model.parameters(), lr=0.0), callbacks=[record], progress_bar=False,
    save_folder=str(out / "ckpt") if mode == "full" else None, save_interval="20ba", save_overwrite=True,
    load_path=str(out / "ckpt" / "ep0-ba20-rank0.pt") if mode == "resume" else None,
)
trainer.fit()
torch.save(record.batches, out / f"trainer-{{mode}}.pt")
(out / f"trainer-{{mode}}.json").write_text(json.dumps(record.info))
"""


@pytest.mark.slow
def test_composer_trainer_resume_gives_the_same_batches(corpus, tmp_path):
    """Composer saves the loader state at batch 20 and resumes in a fresh process (num_workers=2, batch-size
    warmup on, rows waiting in the packer): batches 21..26 are the uninterrupted run's."""
    script = tmp_path / "run_trainer.py"
    script.write_text(RUN_TRAINER.format(tests=str(TESTS_DIR)))
    env = dict(os.environ, PYTHONPATH=pythonpath_with(TESTS_DIR.parent))
    env.pop("WORLD_SIZE", None)
    for mode in ("full", "resume"):
        result = subprocess.run([sys.executable, str(script), mode, str(corpus), str(tmp_path)],
                                capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    full, resumed = torch.load(tmp_path / "trainer-full.pt"), torch.load(tmp_path / "trainer-resume.pt")
    assert len(full) == 26 and len(resumed) == 6
    assert_same_batches(full[20:], resumed)
    info = json.loads((tmp_path / "trainer-full.json").read_text())
    assert info["buffered_at_checkpoint"] > 0  # the packer held rows at the checkpoint
    sizes = [b["input_ids"].shape[0] for b in full]
    # the warmup (2 -> 8 rows over 120 rows), in whole microbatches of 2
    assert sizes[0] == 2 and sizes[-1] > 2 and sizes == sorted(sizes) and all(s % 2 == 0 for s in sizes)
    # the saved position: Composer's row count matches, and resuming reads a bounded number of raw samples
    state = torch.load(tmp_path / "ckpt" / "ep0-ba20-rank0.pt", weights_only=False)["state"]["dataset_state"]
    loader_state = state["train"]
    assert loader_state["rows_in_epoch"] == sum(sizes[:20])
    read = json.loads((tmp_path / "trainer-resume.json").read_text())["raw_read"]
    block = loader_state["ranks"][0]["block"]
    assert block >= 3 and read <= 8 * (2 + sizes[20]) and read < 8 * block


def test_mask_ratio_schedule_over_the_phase(corpus):
    from mmbert_train.data.masking import mask_ratio_at

    phase_tokens = 40 * 8 * 128  # 40 batches of 8 rows of 128
    spec = _spec(corpus, global_batch_size=8, block_samples=32, phase_tokens=phase_tokens,
                 streams=plain_streams(corpus), mask_ratio=0.3)  # fmt: skip
    spec.dataloader.dataset.masking = dataclasses.replace(spec.dataloader.dataset.masking, mask_ratio_end=0.1)
    ratios = [b["mask_ratio"] for b, _ in zip(spec.dataloader, range(45))]
    expected = [mask_ratio_at(k * 8 * 128 / phase_tokens, 0.3, 0.1) for k in range(len(ratios))]
    assert ratios == pytest.approx(expected)
    assert ratios[0] == pytest.approx(0.3) and ratios[-1] == pytest.approx(0.1)


class _FakeStreaming:
    batch_size = 8


def _dataset(world_size=1, block_samples=8):
    from mmbert_train.data.batching import BatchSizeSchedule
    from mmbert_train.data.loader import MaskingSpec, PackedMLMDataset

    return PackedMLMDataset(
        _FakeStreaming(), max_seq_len=16, batch_sizes=BatchSizeSchedule(4, 16, world_size=world_size),
        masking=MaskingSpec(mask_ratio=0.3, vocab_size=100), block_samples=block_samples, rank=0,
        world_size=world_size,
    )  # fmt: skip


def test_state_errors_name_the_mismatch():
    state = {"version": 1, "epoch": 0, "batch_in_epoch": 3, "rows_in_epoch": 12, "rows_seen": 12,
             "block_samples": 8, "world_size": 2, "ranks": [{"block": 1, "rows_into_block": 2}] * 2,
             "streaming": {}}  # fmt: skip
    with pytest.raises(ValueError, match="saved with world_size=2, this run has world_size=1"):
        _dataset().load_state_dict(state)
    with pytest.raises(ValueError, match="unknown version"):
        _dataset().load_state_dict({**state, "version": 7})
    with pytest.raises(ValueError, match=r"batch_size \(8\) must equal block_samples \(16\)"):
        _dataset(block_samples=16)
    dataset = _dataset(world_size=2)
    dataset.load_state_dict(state)  # counters are visible before iterating
    assert (dataset.batch_in_epoch, dataset.rows_seen, dataset.block, dataset.rows_into_block) == (
        3,
        12,
        1,
        2,
    )
    with pytest.raises(ValueError, match="mask_ratio_end"):
        from mmbert_train.data.loader import MaskingSpec

        MaskingSpec(mask_ratio=0.3, vocab_size=100, mask_ratio_end=0.1)


def test_builder_cleans_stale_shared_memory(corpus, monkeypatch):
    """The builder removes dead runs' Streaming shared memory first (only theirs: tests/test_shm_cleanup.py)."""
    import mmbert_train.data.shm

    calls = []
    monkeypatch.setattr(mmbert_train.data.shm, "clean_dead_shared_memory", lambda: calls.append(1))
    from mmbert_train.train.dataloader import build_train_dataloader

    build_train_dataloader(data_config(corpus), global_batch_size=8, vocab_size=VOCAB, rank=0, world_size=1,
                           streams=plain_streams(corpus))  # fmt: skip
    assert calls == [1]


def test_resuming_on_other_data_warns(corpus):
    dataset = _spec(
        corpus, global_batch_size=8, block_samples=32, streams=plain_streams(corpus)
    ).dataloader.dataset
    state = dataset.state_dict(0, True)
    assert state["epoch_samples"] == [620, 620]
    with pytest.warns(UserWarning, match=r"saved for \[samples, epoch samples\] = \[10, 10\]"):
        dataset.load_state_dict({**state, "epoch_samples": [10, 10]})


def test_batches_do_not_depend_on_the_number_of_workers(corpus):
    """Streaming deals blocks to workers and the DataLoader collects them in the same order: resuming with
    another num_workers still gives the same batches."""
    runs = []
    for workers in (0, 2):
        spec = _spec(corpus, global_batch_size=8, block_samples=8, num_workers=workers, max_seq_len=64)
        runs.append([b for b, _ in zip(spec.dataloader, range(12))])
        del spec
    assert_same_batches(*runs)
