"""The phase's training dataloader: read (Streaming) -> cut -> pack -> mask, with exact resumption.

Pipeline, per rank::

    StreamingDataset(streams, batch_size=K)          raw samples, shuffled and split across ranks/workers by Streaming
      -> torch DataLoader(batch_size=K, num_workers)  one "block" = one Streaming batch of K raw samples
      -> pack_block (packing.py)                      cut to max_seq_len, best-fit rows; a block is packed on its own
      -> row FIFO -> device batch of b_k rows         b_k from the batch-size warmup (batching.py)
      -> collate_rows + mask_tokens (masking.py)      masks seeded by (seed, epoch, rank, batch index in the epoch)

Reading (the expensive, I/O-bound part) runs in the DataLoader's worker processes; packing and masking run in
the training process over whole blocks and batches with vectorized numpy / torch, which costs a few
milliseconds per batch (bench/loader_throughput.py) and keeps one packer per rank, whose position is easy to
save.

Resumption. Composer saves ``dataset.state_dict(num_samples, from_beginning)`` with its checkpoints and calls
``load_state_dict`` on resume (then it does not replay batches). Composer counts packed rows, Streaming raw
samples, and the packer holds rows not yet delivered, so the state records, per rank, the first block with rows
not yet delivered and how many of its rows were delivered. Because a block is packed on its own, a block start
is a clean restart point: on resume Streaming restarts at the earliest such block over all ranks
(``sample_in_epoch = block * K * world_size``), each rank skips the blocks before its own (without packing
them), re-packs its block and drops the rows already delivered. Nothing is replayed from the epoch start; the
raw samples read to get back are one block plus the few blocks by which ranks drifted apart. Batch sizes and
mask ratios follow from the global row count, which is saved too, so the resumed run yields exactly the
batches the uninterrupted one would have. With several ranks, ``state_dict`` gathers every rank's position
(an ``all_gather_object``, as Composer does for RNG state), so call it on all ranks (Composer does).

Epoch end. Ranks run out of packed rows at different times; before each batch the ranks agree (an
``all_reduce`` MIN over "I have a full batch") so that every rank yields the same number of batches.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from mmbert_train.data.batching import BatchSizeSchedule
from mmbert_train.data.masking import (
    DEFAULT_MASK_TOKEN_ID,
    DEFAULT_SPECIAL_IDS,
    mask_generator,
    mask_ratio_at,
    mask_tokens,
)
from mmbert_train.data.packing import Row, collate_rows, pack_block, packing_efficiency
from mmbert_train.processes import die_with_parent

if TYPE_CHECKING:
    from streaming import StreamingDataset

    from mmbert_train.data.spec import DataConfig

log = logging.getLogger(__name__)

STATE_VERSION = 1
DEFAULT_BLOCK_SAMPLES = 256
METRIC_KEYS = ("packing_efficiency", "mask_ratio")  # python floats in each batch, for logging


@dataclass(frozen=True)
class MaskingSpec:
    """How the loader masks: ratio ``start -> end`` linearly over ``phase_tokens`` (masking.mask_ratio_at)."""

    mask_ratio: float
    vocab_size: int
    mask_ratio_end: float | None = None
    phase_tokens: int | None = None  # tokens in the phase; needed when mask_ratio_end is set
    mask_token_id: int = DEFAULT_MASK_TOKEN_ID
    special_ids: tuple[int, ...] = DEFAULT_SPECIAL_IDS
    seed: int = 21

    def __post_init__(self) -> None:
        if self.mask_ratio_end is not None and not self.phase_tokens:
            raise ValueError("a mask-ratio schedule (mask_ratio_end) needs phase_tokens, the phase's length")

    def ratio(self, tokens_seen: int) -> float:
        progress = tokens_seen / self.phase_tokens if self.phase_tokens else 0.0
        return mask_ratio_at(progress, self.mask_ratio, self.mask_ratio_end)


def _block_of_samples(samples: Sequence[Mapping[str, Any]]) -> list[np.ndarray]:
    """DataLoader collate_fn: a block is the list of the samples' token arrays."""
    return [np.asarray(s["input_ids"]) for s in samples]


def _dist_world() -> tuple[int, int, bool]:
    """(rank, world_size, torch.distributed usable): the process group's when there is one, else the launcher's
    ``RANK`` / ``WORLD_SIZE`` environment variables (as ``composer -n`` and torchrun set them), else (0, 1)."""
    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    if initialized:
        return torch.distributed.get_rank(), torch.distributed.get_world_size(), True
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), False


def _all_ranks_agree(flag: bool) -> bool:
    """True iff ``flag`` is True on every rank (all_reduce MIN); just ``flag`` without a process group."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    if torch.distributed.get_world_size() == 1:
        return flag
    device = "cpu"
    if torch.distributed.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
    return bool(value.item())


def _gather(obj: Any) -> list[Any]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size() > 1:
            out: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(out, obj)
            return out
    return [obj]


def _worker_dies_with_parent(parent_pid: int, worker_id: int) -> None:
    """``worker_init_fn`` of the reading workers: exit when the training process ``parent_pid`` dies."""
    die_with_parent(parent_pid)


class PackedMLMDataset(IterableDataset):
    """Packed, masked device batches (contract 3) over a ``StreamingDataset``; see the module docstring.

    Iterating it once is one epoch. The raw dataset's ``batch_size`` must equal ``block_samples``. Each yielded
    batch is a dict: ``input_ids``, ``labels``, ``attention_mask`` (B, L) int64, ``doc_lens`` (B, D) int32,
    and the floats ``packing_efficiency`` and ``mask_ratio``.
    """

    def __init__(
        self,
        raw: StreamingDataset,
        *,
        max_seq_len: int,
        batch_sizes: BatchSizeSchedule,
        masking: MaskingSpec,
        block_samples: int = DEFAULT_BLOCK_SAMPLES,
        num_workers: int = 2,
        pad_id: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        prefetch_factor: int = 2,
    ) -> None:
        super().__init__()
        if getattr(raw, "batch_size", None) != block_samples:
            raise ValueError(
                f"the StreamingDataset's batch_size ({getattr(raw, 'batch_size', None)}) must equal "
                f"block_samples ({block_samples}): one Streaming batch is one packing block"
            )
        detected_rank, detected_world, _ = _dist_world()
        self.raw = raw
        self.max_seq_len = max_seq_len
        self.batch_sizes = batch_sizes
        self.masking = masking
        self.block_samples = block_samples
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.pad_id = pad_id
        self.rank = detected_rank if rank is None else rank
        self.world_size = detected_world if world_size is None else world_size
        if batch_sizes.world_size != self.world_size:
            raise ValueError(
                f"batch schedule is for {batch_sizes.world_size} ranks but the world has {self.world_size}"
            )
        # position: epoch, batches and rows delivered in it, rows delivered in the phase (global counts)
        self.epoch = 0
        self.batch_in_epoch = 0
        self.rows_in_epoch = 0
        self.rows_seen = 0
        # this rank's packer: first block with rows not yet delivered, and how many of its rows were delivered
        self.block = 0
        self.rows_into_block = 0
        self._resume: dict[str, Any] | None = None
        # packed rows waiting in this rank's buffer after the last batch (for tests and logging)
        self.buffered_rows = 0
        # raw samples this rank read in the current __iter__ before its first batch (resume cost, for tests)
        self.raw_samples_before_first_batch = 0

    # ------------------------------------------------------------------------------------------ reading
    def _raw_blocks(self) -> Iterator[list[np.ndarray]]:
        loader = DataLoader(
            self.raw,
            batch_size=self.block_samples,
            num_workers=self.num_workers,
            collate_fn=_block_of_samples,
            prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
            persistent_workers=False,
            # workers exit when the training process dies (kill -9 too) instead of holding shared memory
            worker_init_fn=functools.partial(_worker_dies_with_parent, os.getpid())
            if self.num_workers > 0
            else None,
        )
        yield from loader

    def _epoch_samples(self) -> list[int] | None:
        """[samples on disk, samples per epoch after proportions]: a fingerprint of the data read."""
        sizes = getattr(self.raw, "num_samples", None), getattr(self.raw, "epoch_size", None)
        return [int(x) for x in sizes] if all(isinstance(x, (int, np.integer)) for x in sizes) else None

    def _streaming_settings(self) -> dict[str, Any]:
        """What Streaming needs, besides the position, to rebuild the same epoch order on resume."""
        state = self.raw.state_dict(0, True)
        return {k: state[k] for k in ("num_canonical_nodes", "shuffle_seed", "initial_physical_nodes")}

    # ------------------------------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[dict[str, Any]]:
        resume, self._resume = self._resume, None
        if resume is None:
            # Streaming's epoch counter (shared memory, advanced by its workers) says which epoch is read next
            self.epoch = max(self.epoch, self.raw.next_epoch)
            self.batch_in_epoch = self.rows_in_epoch = 0
            self.block, self.rows_into_block = 0, 0
            start_block = 0
        else:
            self.epoch = resume["epoch"]
            self.batch_in_epoch = resume["batch_in_epoch"]
            self.rows_in_epoch = resume["rows_in_epoch"]
            self.rows_seen = resume["rows_seen"]
            mine = resume["ranks"][self.rank]
            self.block, self.rows_into_block = mine["block"], mine["rows_into_block"]
            start_block = min(r["block"] for r in resume["ranks"])
        resume_block, skip_rows = self.block, self.rows_into_block
        if resume is not None:
            # every rank writes the same state: Streaming restarts all ranks at the earliest block start
            sample_in_epoch = start_block * self.block_samples * self.world_size
            self.raw.load_state_dict(
                {"epoch": self.epoch, "sample_in_epoch": sample_in_epoch, **resume["streaming"]}
            )

        L = self.max_seq_len
        # packed blocks with rows not yet delivered: [block id, all its rows, rows delivered so far]
        fifo: collections.deque[list[Any]] = collections.deque()
        n_buffered = 0
        next_block = start_block
        blocks = self._raw_blocks()
        exhausted = False
        self.raw_samples_before_first_batch = 0
        first = True
        while True:
            want = self.batch_sizes.device_batch_size(self.rows_seen * L)
            while n_buffered < want and not exhausted:
                try:
                    samples = next(blocks)
                except StopIteration:
                    exhausted = True
                    break
                block_id, next_block = next_block, next_block + 1
                if first:
                    self.raw_samples_before_first_batch += len(samples)
                if block_id < resume_block:  # resuming: every row of it was delivered before the checkpoint
                    continue
                rows = pack_block(samples, L)
                delivered = skip_rows if block_id == resume_block else 0
                if delivered < len(rows):
                    fifo.append([block_id, rows, delivered])
                    n_buffered += len(rows) - delivered
            if not _all_ranks_agree(n_buffered >= want):
                break
            taken: list[Row] = []
            while len(taken) < want:
                entry = fifo[0]
                _, rows, delivered = entry
                k = min(want - len(taken), len(rows) - delivered)
                taken.extend(rows[delivered : delivered + k])
                entry[2] += k
                if entry[2] == len(rows):
                    fifo.popleft()
            n_buffered -= want
            self.buffered_rows = n_buffered
            # where a resume restarts: the oldest block with undelivered rows, or the next block to read
            self.block, self.rows_into_block = (fifo[0][0], fifo[0][2]) if fifo else (next_block, 0)
            batch = self._make_batch(taken)
            self.rows_seen += want * self.world_size
            self.rows_in_epoch += want * self.world_size
            self.batch_in_epoch += 1
            first = False
            yield batch
        # epoch over: the next __iter__ starts the next epoch from its beginning
        self.epoch += 1
        self.batch_in_epoch = self.rows_in_epoch = 0
        self.block = self.rows_into_block = 0

    def _make_batch(self, rows: list[Row]) -> dict[str, Any]:
        batch: dict[str, Any] = collate_rows(rows, self.max_seq_len, self.pad_id)
        m = self.masking
        ratio = m.ratio(self.rows_seen * self.max_seq_len)
        generator = mask_generator(m.seed, self.epoch, self.rank, self.batch_in_epoch)
        batch["input_ids"], batch["labels"] = mask_tokens(
            batch["input_ids"],
            mask_ratio=ratio,
            mask_token_id=m.mask_token_id,
            vocab_size=m.vocab_size,
            special_ids=m.special_ids,
            generator=generator,
        )
        batch["packing_efficiency"] = packing_efficiency(batch["attention_mask"])
        batch["mask_ratio"] = ratio
        return batch

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self, num_samples: int, from_beginning: bool = True) -> dict[str, Any]:
        """The loader's position (Composer calls this on every rank when it checkpoints).

        ``num_samples`` is Composer's count of rows delivered in the epoch (all ranks); it is checked against
        the loader's own count, which is exact.
        """
        if from_beginning and num_samples != self.rows_in_epoch:
            warnings.warn(
                f"PackedMLMDataset.state_dict: the trainer counts {num_samples} rows in this epoch but the "
                f"loader delivered {self.rows_in_epoch}; saving the loader's own position",
                stacklevel=2,
            )
        ranks = _gather({"block": self.block, "rows_into_block": self.rows_into_block})
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "rows_in_epoch": self.rows_in_epoch,
            "rows_seen": self.rows_seen,
            "block_samples": self.block_samples,
            "world_size": self.world_size,
            "ranks": ranks,
            "streaming": self._streaming_settings(),
            "epoch_samples": self._epoch_samples(),
        }

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`'s output at the next ``__iter__``."""
        if obj.get("version") != STATE_VERSION:
            raise ValueError(
                f"loader state: unknown version {obj.get('version')!r} (expected {STATE_VERSION})"
            )
        for key, mine in (("world_size", self.world_size), ("block_samples", self.block_samples)):
            if obj[key] != mine:
                raise ValueError(
                    f"loader state: saved with {key}={obj[key]}, this run has {key}={mine}; exact resumption "
                    f"needs the same {key}"
                )
        if len(obj["ranks"]) != self.world_size:
            raise ValueError(f"loader state: {len(obj['ranks'])} rank positions for {self.world_size} ranks")
        saved, mine = obj.get("epoch_samples"), self._epoch_samples()
        if saved is not None and mine is not None and saved != mine:
            warnings.warn(
                f"loader state: saved for [samples, epoch samples] = {saved}, this run's streams give {mine}; the data "
                "or its proportions changed, so the resumed batches cannot match the interrupted run's",
                stacklevel=2,
            )
        self._resume = dict(obj)
        # expose the restored counters right away (Composer may log or checkpoint before iterating)
        self.epoch, self.batch_in_epoch = obj["epoch"], obj["batch_in_epoch"]
        self.rows_in_epoch, self.rows_seen = obj["rows_in_epoch"], obj["rows_seen"]
        mine = obj["ranks"][self.rank]
        self.block, self.rows_into_block = mine["block"], mine["rows_into_block"]


def build_packed_dataset(
    data_cfg: DataConfig,
    *,
    global_batch_size: int,
    vocab_size: int,
    device_microbatch_size: int | None = None,
    phase_tokens: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    block_samples: int = DEFAULT_BLOCK_SAMPLES,
    mask_token_id: int = DEFAULT_MASK_TOKEN_ID,
    special_ids: Sequence[int] = DEFAULT_SPECIAL_IDS,
    pad_id: int = 0,
    recipe_dir: str | os.PathLike | None = None,
    streams: list | None = None,
    epoch_size: int | None = None,
    clean_shared_memory: bool = True,
    streaming_kwargs: Mapping[str, Any] | None = None,
) -> PackedMLMDataset:
    """The phase's packed, masked training dataset (contract 3 batches) from the recipe's ``data:`` section.

    ``global_batch_size``: full global batch in rows (packed sequences); the warmup of ``data_cfg.batch_warmup``
    grows toward it. ``phase_tokens``: the phase's length in tokens, used for the mask-ratio schedule and, via
    the sampling plan, as Streaming's ``epoch_size`` (one epoch = the phase's mixture) unless ``epoch_size`` is
    given. ``streams``: override the streams of :func:`mmbert_train.data.sampling.build_phase_plan`.
    ``device_microbatch_size``: when given, batch sizes are multiples of it on every rank. Calls
    `mmbert_train.data.shm.clean_dead_shared_memory` on every rank first (``clean_shared_memory``).
    """
    from streaming import StreamingDataset

    detected_rank, detected_world, _ = _dist_world()
    rank = detected_rank if rank is None else rank
    world_size = detected_world if world_size is None else world_size
    if streams is None:
        from mmbert_train.data.sampling import build_phase_plan

        plan = build_phase_plan(data_cfg, recipe_dir=recipe_dir)
        streams = plan.streams()
        if epoch_size is None and phase_tokens:
            epoch_size = plan.samples_for_tokens(phase_tokens)
    if clean_shared_memory:
        # only segments no live process uses (Streaming's own clean-up removes those of running trainings too)
        from mmbert_train.data.shm import clean_dead_shared_memory

        clean_dead_shared_memory()
    raw = StreamingDataset(
        streams=streams,
        batch_size=block_samples,
        shuffle=data_cfg.shuffle,
        shuffle_seed=data_cfg.shuffle_seed,
        epoch_size=epoch_size,
        **dict(streaming_kwargs or {}),
    )
    warmup = data_cfg.batch_warmup
    schedule = BatchSizeSchedule(
        full_batch_size=global_batch_size,
        max_seq_len=data_cfg.max_seq_len,
        start_batch_size=warmup.start_batch_size,
        warmup_tokens=warmup.tokens,
        world_size=world_size,
        device_microbatch_size=device_microbatch_size,
    )
    masking = MaskingSpec(
        mask_ratio=data_cfg.mask_ratio,
        mask_ratio_end=data_cfg.mask_ratio_end,
        phase_tokens=phase_tokens,
        vocab_size=vocab_size,
        mask_token_id=mask_token_id,
        special_ids=tuple(special_ids),
        seed=data_cfg.shuffle_seed,
    )
    dataset = PackedMLMDataset(
        raw,
        max_seq_len=data_cfg.max_seq_len,
        batch_sizes=schedule,
        masking=masking,
        block_samples=block_samples,
        num_workers=data_cfg.num_workers,
        pad_id=pad_id,
        rank=rank,
        world_size=world_size,
    )
    return dataset


__all__: list[str] = ["MaskingSpec", "PackedMLMDataset", "build_packed_dataset"]
