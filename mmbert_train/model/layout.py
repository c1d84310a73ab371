"""Unpadding: turn any of the three batch forms into one flat stream of real tokens plus document boundaries.

The encoder runs on ``(num_tokens, hidden)`` tensors that hold only real tokens; `TokenLayout` says where each
document starts (``cu_seqlens``), each token's document and its position inside it. Attention backends that
need rectangles regather the tokens: `to_padded` / `from_padded` give one ``(num_docs, max_len, ...)`` rectangle
(the eager reference), `to_buckets` / `from_buckets` several rectangles of documents of similar length (sdpa's
global layers: little padding for variable-length batches), and `block_local_index` the blocks of local attention.
The index tensors are computed once per forward pass and cached here, shared by all layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..constants import IGNORE_INDEX


@dataclass
class TokenLayout:
    """Document structure of a flat token stream of ``num_tokens`` tokens.

    ``cu_seqlens``: int32 ``(num_docs + 1,)``, document ``n`` covers tokens ``cu_seqlens[n] : cu_seqlens[n+1]``;
    ``max_seqlen``: the longest document; ``doc_ids`` / ``position_ids``: int64 ``(num_tokens,)``.
    """

    cu_seqlens: torch.Tensor
    max_seqlen: int
    num_tokens: int
    doc_ids: torch.Tensor
    position_ids: torch.Tensor
    uniform: bool  # every document has length max_seqlen (no padding needed to make a rectangle)
    lengths: list[int] = field(default_factory=list)  # document lengths on the host
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_seqlens(cls, seqlens: torch.Tensor, max_seqlen: int | None = None) -> TokenLayout:
        """Layout of documents with the given lengths (all > 0), laid out back to back."""
        seqlens = seqlens.to(torch.int64)
        cu = torch.nn.functional.pad(torch.cumsum(seqlens, 0), (1, 0))
        host = seqlens.tolist()
        num_tokens = int(sum(host))
        longest = max(host) if host else 0
        if max_seqlen is not None and max_seqlen < longest:
            raise ValueError(
                f"max_seqlen {max_seqlen} is smaller than the longest document ({longest} tokens)"
            )
        device = seqlens.device
        doc_ids = torch.repeat_interleave(
            torch.arange(len(host), device=device), seqlens, output_size=num_tokens
        )
        position_ids = torch.arange(num_tokens, device=device) - cu[doc_ids]
        return cls(
            cu_seqlens=cu.to(torch.int32),
            max_seqlen=longest,
            num_tokens=num_tokens,
            doc_ids=doc_ids,
            position_ids=position_ids,
            uniform=bool(host) and min(host) == longest,
            lengths=host,
        )

    @property
    def num_docs(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def seqlens(self) -> torch.Tensor:
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).to(torch.int64)

    def cached(self, key, build):
        """Per-forward cache for index tensors and masks shared by all layers (keyed by the caller)."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    # ---- rectangular (num_docs, length) view -------------------------------------------------------------
    def padded_index(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gather, valid)``, both ``(num_docs, length)``: token index of each slot (``num_tokens`` for padding)."""

        def build():
            slot = torch.arange(length, device=self.cu_seqlens.device)
            valid = slot[None, :] < self.seqlens[:, None]
            gather = self.cu_seqlens[:-1, None].to(torch.int64) + slot[None, :]
            gather = torch.where(valid, gather, torch.full_like(gather, self.num_tokens))
            return gather, valid

        return self.cached(("padded_index", length), build)

    def to_padded(self, x: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """``(num_tokens, ...)`` -> ``(num_docs, length, ...)`` with zeros in the padding slots."""
        length = self.max_seqlen if length is None else length
        if self.uniform and length == self.max_seqlen:
            return x.view(self.num_docs, length, *x.shape[1:])
        gather, _ = self.padded_index(length)
        padded_source = torch.cat([x, x.new_zeros(1, *x.shape[1:])])
        return padded_source[gather.flatten()].view(self.num_docs, length, *x.shape[1:])

    def from_padded(self, y: torch.Tensor) -> torch.Tensor:
        """``(num_docs, length, ...)`` -> ``(num_tokens, ...)``: the inverse of `to_padded` on real tokens."""
        num_docs, length = y.shape[:2]
        if self.uniform and length == self.max_seqlen:
            return y.reshape(self.num_tokens, *y.shape[2:])
        flat = self.cached(("flat_slot", length), lambda: self.doc_ids * length + self.position_ids)
        return y.reshape(num_docs * length, *y.shape[2:])[flat]


@dataclass
class FlatBatch:
    """A batch in flat form: ``input_ids (num_tokens,)`` + layout; ``scatter`` maps tokens back to the input grid."""

    input_ids: torch.Tensor
    layout: TokenLayout
    labels: torch.Tensor | None
    scatter: torch.Tensor | None  # flat positions in the (B*L) input grid, or None for the flat form
    grid_shape: tuple[int, ...]  # input_ids' original shape
    row_tokens: list[int] | None = None  # real tokens per grid row (a right-padded prefix), when padded


def flatten_batch(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    doc_lens: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
) -> FlatBatch:
    """Normalise the three batch forms of Contract 1 into a `FlatBatch` (validating their consistency).

    1. padded ``input_ids (B, L)`` + ``attention_mask (B, L)`` (right padding; one document per row);
    2. packed rows: the same plus ``doc_lens (B, D)``, document lengths packed left to right, zero-padded;
    3. flat: ``input_ids (T,)`` + ``cu_seqlens (n_docs + 1,)``.
    """
    if labels is not None and labels.shape != input_ids.shape:
        raise ValueError(
            f"labels has shape {tuple(labels.shape)}, expected input_ids' {tuple(input_ids.shape)}"
        )
    if cu_seqlens is not None:
        if input_ids.dim() != 1:
            raise ValueError(
                f"with cu_seqlens, input_ids must be flat (T,), got shape {tuple(input_ids.shape)}"
            )
        if attention_mask is not None or doc_lens is not None:
            raise ValueError("pass either cu_seqlens (flat form) or attention_mask/doc_lens, not both")
        cu = cu_seqlens.to(torch.int64)
        seqlens = cu[1:] - cu[:-1]
        if cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != input_ids.numel() or bool((seqlens < 0).any()):
            raise ValueError(
                f"cu_seqlens must start at 0, be non-decreasing and end at the number of tokens "
                f"({input_ids.numel()}); got {cu_seqlens.tolist()[:8]}{'...' if cu.numel() > 8 else ''}"
            )
        layout = TokenLayout.from_seqlens(seqlens[seqlens > 0], max_seqlen)
        return FlatBatch(input_ids, layout, labels, None, tuple(input_ids.shape))

    if input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must be (batch, seq) — or flat (T,) with cu_seqlens — got shape {tuple(input_ids.shape)}"
        )
    batch, seq = input_ids.shape
    if attention_mask is None:
        if doc_lens is not None:
            raise ValueError("doc_lens (packed rows) needs the attention_mask that marks the real tokens")
        mask = torch.ones_like(input_ids, dtype=torch.bool)
    else:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected {tuple(input_ids.shape)}"
            )
        mask = attention_mask.bool()
    row_tokens = mask.sum(dim=1)
    # Right padding only: within a row, no real token may follow a padding slot.
    if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError("attention_mask must be right-padded: a real token follows padding in some row")
    if doc_lens is not None:
        if doc_lens.dim() != 2 or doc_lens.shape[0] != batch:
            raise ValueError(
                f"doc_lens must be (batch, max_docs) with batch {batch}, got {tuple(doc_lens.shape)}"
            )
        doc_lens = doc_lens.to(torch.int64)
        if bool((doc_lens < 0).any()):
            raise ValueError("doc_lens must be >= 0")
        mismatch = (doc_lens.sum(dim=1) != row_tokens).nonzero().flatten()
        if mismatch.numel():
            row = int(mismatch[0])
            raise ValueError(
                f"doc_lens row {row} sums to {int(doc_lens[row].sum())} but attention_mask marks "
                f"{int(row_tokens[row])} real tokens"
            )
        seqlens = doc_lens.flatten()
    else:
        seqlens = row_tokens
    if labels is not None and bool(((labels != IGNORE_INDEX) & ~mask).any()):
        raise ValueError("labels mark a padding position (attention_mask == 0); use -100 there")
    layout = TokenLayout.from_seqlens(seqlens[seqlens > 0], max_seqlen)
    if layout.num_tokens == batch * seq:
        scatter = None
        flat_ids = input_ids.reshape(-1)
        flat_labels = labels.reshape(-1) if labels is not None else None
    else:
        scatter = mask.flatten().nonzero().flatten()
        flat_ids = input_ids.reshape(-1)[scatter]
        flat_labels = labels.reshape(-1)[scatter] if labels is not None else None
    row_counts = row_tokens.tolist() if scatter is not None else None
    return FlatBatch(flat_ids, layout, flat_labels, scatter, (batch, seq), row_counts)


BUCKET_RATIO = 1.25  # a bucket holds documents longer than 1 / BUCKET_RATIO of its longest one


@dataclass
class Bucket:
    gather: torch.Tensor  # (docs, length) token index per slot; padding slots point at token 0 (masked out)
    valid: torch.Tensor  # (docs, length) bool
    full: bool  # no padding slot


def document_buckets(layout: TokenLayout) -> tuple[list[Bucket], torch.Tensor | None]:
    """Documents grouped by length (longest first, each group padded to its own longest document).

    Attention on a rectangle costs ~ docs * length^2, so grouping documents whose lengths are within a factor
    `BUCKET_RATIO` keeps the padded area within ~1.6x of the real one, at one extra kernel call per group.
    Returns the buckets and the permutation that puts bucket-ordered tokens back in stream order.
    """
    device = layout.cu_seqlens.device
    order = sorted(range(len(layout.lengths)), key=lambda n: -layout.lengths[n])
    groups: list[list[int]] = []
    for n in order:
        if groups and layout.lengths[n] * BUCKET_RATIO >= layout.lengths[groups[-1][0]]:
            groups[-1].append(n)
        else:
            groups.append([n])
    starts = layout.cu_seqlens[:-1].to(torch.int64)
    buckets = []
    for group in groups:
        length = layout.lengths[group[0]]
        docs = torch.tensor(group, device=device)
        slot = torch.arange(length, device=device)
        valid = slot[None, :] < torch.tensor([layout.lengths[n] for n in group], device=device)[:, None]
        gather = torch.where(valid, starts[docs][:, None] + slot[None, :], 0)
        buckets.append(Bucket(gather, valid, all(layout.lengths[n] == length for n in group)))
    if len(buckets) == 1 and group == list(range(len(group))):
        return buckets, None  # documents already in stream order
    bucket_order = torch.cat([b.gather[b.valid] for b in buckets])
    inverse = torch.empty_like(bucket_order)
    inverse[bucket_order] = torch.arange(bucket_order.numel(), device=device)
    return buckets, inverse


def to_buckets(layout: TokenLayout, x: torch.Tensor) -> list[torch.Tensor]:
    """``(num_tokens, ...)`` -> one ``(docs, length, ...)`` tensor per bucket.

    Padding slots repeat token 0 instead of holding zeros (saving a copy of the input): callers must mask them as
    keys and drop them as queries, which `from_buckets` and the attention masks do.
    """
    buckets, _ = layout.cached("buckets", lambda: document_buckets(layout))
    if layout.uniform and len(buckets) == 1:
        return [x.view(layout.num_docs, layout.max_seqlen, *x.shape[1:])]
    return [x[b.gather] for b in buckets]


def from_buckets(layout: TokenLayout, outputs: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of `to_buckets` on the real tokens: back to ``(num_tokens, ...)`` in stream order."""
    buckets, inverse = layout.cached("buckets", lambda: document_buckets(layout))
    if layout.uniform and len(buckets) == 1:
        return outputs[0].reshape(layout.num_tokens, *outputs[0].shape[2:])
    flat = torch.cat([out[b.valid] if not b.full else out.flatten(0, 1) for out, b in zip(outputs, buckets)])
    return flat if inverse is None else flat[inverse]


@dataclass
class BlockLocalIndex:
    """Blocks of ``b`` queries, each with the ``3b`` keys of its own and neighbouring blocks (same document)."""

    queries: torch.Tensor  # (blocks, b) token index; slots past the document's end point at token 0
    keys: torch.Tensor  # (blocks, 3b) token index; slots outside the document point at token 0 (masked out)
    mask: torch.Tensor  # (blocks, 1, b, 3b) bool, True = attend
    real_queries: torch.Tensor  # (blocks * b,) bool: the slots holding tokens, in stream order


def block_local_index(layout: TokenLayout, window_half: int) -> BlockLocalIndex:
    """Index tensors for local attention ``|i - j| <= window_half`` in blocks of ``b = max(window_half, 1)``.

    Document ``n`` of length ``L`` gets ``ceil(L / b)`` blocks; block ``k`` holds queries ``k*b .. k*b+b-1`` and
    keys ``(k-1)*b .. (k+2)*b-1``, which contain every key within ``window_half`` of those queries. Cost per query:
    ``3b`` keys, whatever the document length.
    """

    def build():
        b = max(window_half, 1)
        device = layout.cu_seqlens.device
        per_doc = [-(-n // b) for n in layout.lengths]
        counts = torch.tensor(per_doc, device=device)
        total = int(sum(per_doc))
        doc = torch.repeat_interleave(torch.arange(len(per_doc), device=device), counts, output_size=total)
        first_block = torch.nn.functional.pad(torch.cumsum(counts, 0), (1, 0))[:-1]
        block = torch.arange(total, device=device) - first_block[doc]  # block number inside its document
        start = layout.cu_seqlens[:-1].to(torch.int64)[doc]
        length = torch.tensor(layout.lengths, device=device)[doc]
        i = torch.arange(b, device=device)
        t = torch.arange(3 * b, device=device)
        q_pos = block[:, None] * b + i[None, :]  # (blocks, b) position in the document
        k_pos = (block[:, None] - 1) * b + t[None, :]  # (blocks, 3b)
        q_ok = q_pos < length[:, None]
        k_ok = (k_pos >= 0) & (k_pos < length[:, None])
        queries = torch.where(q_ok, start[:, None] + q_pos, 0)
        keys = torch.where(k_ok, start[:, None] + k_pos, 0)
        near = ((t[None, :] - b) - i[:, None]).abs() <= window_half  # (b, 3b), the same for every block
        mask = near[None] & k_ok[:, None, :]
        # Slots past a document's end get every key so that no softmax row is empty (their output is dropped).
        mask = mask | ~q_ok[:, :, None]
        return BlockLocalIndex(queries, keys, mask[:, None], q_ok.flatten())

    return layout.cached(("block_local", window_half), build)
