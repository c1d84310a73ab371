"""The loader under `composer -n 2` (gloo on CPU): ranks split the epoch, and resume exactly."""

from __future__ import annotations

import collections
import json
import random
import sys
from pathlib import Path

import pytest
import torch
from test_loader import assert_same_batches, documents, run_loader_script, write_corpus

COMPOSER = str(Path(sys.executable).with_name("composer"))


def _launcher(tmp_path):
    return [
        COMPOSER,
        "-n",
        "2",
        "--master_port",
        str(random.randint(20000, 40000)),
        "--stderr",
        str(tmp_path / "rank{rank}.err"),
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.mark.dist
def test_two_ranks_split_the_epoch(corpus, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir(), double.mkdir()
    run_loader_script(single, corpus, "epoch", 0, 0)
    run_loader_script(double, corpus, "epoch", 0, 0, launcher=_launcher(tmp_path))
    one = torch.load(single / "epoch-0.pt")
    rank0, rank1 = torch.load(double / "epoch-0.pt"), torch.load(double / "epoch-1.pt")
    assert len(rank0) == len(rank1)  # every rank yields the same number of batches
    # global batch 8 over two ranks: 4 rows each once the warmup is done
    assert rank0[-1]["input_ids"].shape[0] == 4 and one[-1]["input_ids"].shape[0] == 8
    docs0 = collections.Counter(d for b in rank0 for d in documents(b))
    docs1 = collections.Counter(d for b in rank1 for d in documents(b))
    single_docs = collections.Counter(d for b in one for d in documents(b))
    # different samples on each rank: the overlap is at most Streaming's few padding repeats
    assert sum((docs0 & docs1).values()) <= 8
    # together they cover the single-process epoch, but for the rows each rank's packer still held when the
    # first rank ran out: at most one block (8 samples of <= 400 tokens) and one device batch (4 x 64) per rank
    missing = single_docs - (docs0 | docs1)
    assert sum(len(d) * n for d, n in missing.items()) <= 2 * (8 * 400 + 4 * 64)
    total = sum(len(d) * n for d, n in single_docs.items())
    assert sum(len(d) * n for d, n in (docs0 + docs1).items()) > 0.9 * total


@pytest.mark.dist
def test_two_rank_resume_gives_the_same_batches(corpus, tmp_path):
    n_before, n_after = 60, 4
    run_loader_script(tmp_path, corpus, "full", n_before, n_after, launcher=_launcher(tmp_path))
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    run_loader_script(tmp_path, corpus, "resume", 0, n_after, launcher=_launcher(tmp_path))
    for rank in (0, 1):
        assert_same_batches(
            torch.load(tmp_path / f"full-{rank}.pt"), torch.load(tmp_path / f"resume-{rank}.pt")
        )
        read = json.loads((tmp_path / f"resume-{rank}.json").read_text())
        blocks = [r["block"] for r in state["ranks"]]
        rows_needed = torch.load(tmp_path / f"resume-{rank}.pt")[0]["input_ids"].shape[0]
        # one block to restart, the blocks by which the ranks drifted apart, what the first batch needs
        assert read <= 8 * (2 + max(blocks) - min(blocks) + rows_needed)
        assert min(blocks) >= 4 and read < 8 * max(blocks)  # no replay from the epoch start
