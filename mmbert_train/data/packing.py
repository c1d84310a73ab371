"""Cut long samples, pack pieces into fixed-length rows (greedy best fit), and build packed batches.

Framing of a cut sample. Samples on disk are ``<bos> t_1 ... t_n <eos>`` (docs/architecture.md, contract 2).
One longer than ``max_seq_len`` is cut into consecutive pieces of ``max_seq_len`` tokens, the last one holding
the remainder; nothing is added or dropped, so only the first piece starts with ``<bos>`` and only the last
ends with ``<eos>``. Every piece is its own document in the packed row: positions restart and attention does
not cross into the neighbouring piece.

Packing. The pieces of a block of samples are placed by greedy best-fit decreasing: longest piece first, each
into the open row whose free space is the smallest that still fits it, or a new row. A piece is never split
across rows, rows hold at most ``max_seq_len`` tokens, and a block is packed on its own (no piece is carried
into the next block), which makes every block start a clean restart point for resuming a run.

Batch format (contract 3): ``input_ids (B, L)`` int64 right-padded with ``pad_id``, ``attention_mask (B, L)``
int64 (1 = real token), ``doc_lens (B, D)`` int32: the lengths of the documents left to right in each row,
zero-padded to the most documents any row of the batch holds. Packing efficiency = real tokens / (B * L).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np
import torch

Row = list[np.ndarray]  # the pieces of one packed row, left to right


def cut_sample(ids: np.ndarray, max_seq_len: int) -> list[np.ndarray]:
    """Consecutive pieces of at most ``max_seq_len`` tokens (views into ``ids``); see the module docstring."""
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len must be positive, got {max_seq_len}")
    n = len(ids)
    if n <= max_seq_len:
        return [ids]
    return [ids[start : start + max_seq_len] for start in range(0, n, max_seq_len)]


def best_fit_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Assign items (by index) to rows of ``capacity`` by greedy best-fit decreasing.

    Items are taken longest first (ties by index, so the result is deterministic); each goes into the open
    row with the least free space that still fits it, else into a new row. Rows are returned in the order they
    were opened, each listing its items in placement order.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    # open rows with free space, kept sorted by (free, row index) for a bisect lookup of the best fit
    free_list: list[tuple[int, int]] = []
    for i in order:
        size = lengths[i]
        if size > capacity or size < 1:
            raise ValueError(f"item {i} has length {size}; items must be in [1, {capacity}]")
        pos = bisect.bisect_left(free_list, (size, -1))
        if pos < len(free_list):
            free, row = free_list.pop(pos)
        else:
            free, row = capacity, len(rows)
            rows.append([])
        rows[row].append(i)
        free -= size
        if free > 0:
            bisect.insort(free_list, (free, row))
    return rows


def pack_block(samples: Sequence[np.ndarray], max_seq_len: int) -> list[Row]:
    """Cut every sample of a block and pack all pieces into rows of at most ``max_seq_len`` tokens."""
    pieces = [piece for sample in samples if len(sample) for piece in cut_sample(sample, max_seq_len)]
    rows = best_fit_rows([len(p) for p in pieces], max_seq_len)
    return [[pieces[i] for i in row] for row in rows]


def collate_rows(rows: Sequence[Row], max_seq_len: int, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Packed rows -> ``input_ids``, ``attention_mask``, ``doc_lens`` tensors (module docstring)."""
    n_rows = len(rows)
    input_ids = np.full((n_rows, max_seq_len), pad_id, dtype=np.int64)
    attention_mask = np.zeros((n_rows, max_seq_len), dtype=np.int64)
    max_docs = max((len(row) for row in rows), default=1)
    doc_lens = np.zeros((n_rows, max(max_docs, 1)), dtype=np.int32)
    for r, row in enumerate(rows):
        offset = 0
        for d, piece in enumerate(row):
            n = len(piece)
            input_ids[r, offset : offset + n] = piece
            doc_lens[r, d] = n
            offset += n
        if offset > max_seq_len:
            raise ValueError(f"row {r} holds {offset} tokens, more than max_seq_len {max_seq_len}")
        attention_mask[r, :offset] = 1
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention_mask),
        "doc_lens": torch.from_numpy(doc_lens),
    }


def packing_efficiency(attention_mask: torch.Tensor) -> float:
    """Real tokens / capacity of a packed batch (``attention_mask`` marks real tokens)."""
    if attention_mask.numel() == 0:
        return 0.0
    # numpy: no thread pool. float(): numpy >= 2.3 returns a numpy integer here, whose quotient is a numpy
    # float that torch's DataLoader would turn into a 0-dim tensor.
    return float(np.count_nonzero(attention_mask.cpu().numpy()) / attention_mask.numel())


def cu_seqlens_from_doc_lens(doc_lens: torch.Tensor) -> torch.Tensor:
    """Flat-packed ``cu_seqlens`` (int32, starting at 0) for the row-major concatenation of a batch's real
    tokens, i.e. ``input_ids[attention_mask.bool()]`` (contract 1, form 3)."""
    lens = doc_lens.reshape(-1)
    lens = lens[lens > 0].to(torch.int32)
    return torch.nn.functional.pad(torch.cumsum(lens, 0, dtype=torch.int32), (1, 0))
