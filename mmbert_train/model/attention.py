"""Self-attention on unpadded tokens, with four interchangeable backends.

Every backend takes ``q, k, v`` of shape ``(num_tokens, heads, head_dim)`` (RoPE already applied) and a
`TokenLayout`, and returns ``(num_tokens, heads, head_dim)``. Tokens attend only inside their own document; in
local layers (``window_half >= 0``) query ``i`` also sees key ``j`` only iff ``|i - j| <= window_half``.

- ``flash``: flash-attn's ``flash_attn_varlen_func`` on the flat stream, ``window_size=(w, w)``. CUDA, fp16/bf16.
- ``flex``: PyTorch FlexAttention on the flat stream with a document (+ sliding-window) block mask; compiled on
  CUDA. On CPU it runs PyTorch's unfused reference implementation (correct, quadratic: tests only).
- ``sdpa``: ``F.scaled_dot_product_attention``. Global layers (and local layers when every document is short):
  documents grouped into buckets of similar length, one padded rectangle per bucket. Local layers when the longest
  document exceeds ``4w`` (``w = local_attention // 2``): block-local attention — each document is cut into blocks
  of ``w`` tokens and each block attends only to the ``3w`` keys of itself and its two neighbours (masked to
  ``|i - j| <= w``), so the cost grows linearly with length instead of quadratically.
- ``eager``: an explicit ``softmax(q k^T / sqrt(d) + mask) v`` reference on the rectangle.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F

from .layout import TokenLayout, block_local_index, document_buckets, from_buckets, to_buckets

BACKENDS = ("flash", "flex", "sdpa", "eager")
_FLEX_BLOCK = 128  # FlexAttention's default block size; the flat stream is padded to a multiple of it


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def flex_attention_available() -> bool:
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


def resolve_backend(requested: str, device: torch.device) -> str:
    """``auto``: flash-attn when installed and on CUDA, else FlexAttention on CUDA, else sdpa."""
    if requested != "auto":
        if requested == "flash" and not flash_attn_available():
            raise RuntimeError(
                "attn_backend='flash' needs the flash-attn package (pip install 'mmbert-train[gpu]')"
            )
        if requested == "flash" and device.type != "cuda":
            raise RuntimeError(f"attn_backend='flash' needs CUDA tensors, got device {device}")
        if requested not in BACKENDS:
            raise ValueError(f"unknown attention backend {requested!r}; choose from {('auto',) + BACKENDS}")
        return requested
    if device.type == "cuda":
        if flash_attn_available():
            return "flash"
        if flex_attention_available():
            return "flex"
    return "sdpa"


# ---- rectangle helpers (sdpa / eager) ----------------------------------------------------------------------


def _rectangle(layout: TokenLayout, q, k, v, length: int | None = None):
    """(num_tokens, h, d) -> (num_docs, h, length, d) for each of q, k, v."""
    return [layout.to_padded(t, length).transpose(1, 2) for t in (q, k, v)]


def _from_rectangle(layout: TokenLayout, out: torch.Tensor) -> torch.Tensor:
    return layout.from_padded(out.transpose(1, 2))


def _dense_mask(layout: TokenLayout, window_half: int) -> torch.Tensor | None:
    """Boolean ``(num_docs, 1, L, L)`` (or key-only ``(num_docs, 1, 1, L)``) mask, True = may attend; None = all."""

    def build():
        length = layout.max_seqlen
        _, valid = layout.padded_index(length)
        if window_half < 0:
            return None if layout.uniform else valid[:, None, None, :]
        pos = torch.arange(length, device=valid.device)
        in_window = (pos[:, None] - pos[None, :]).abs() <= window_half
        return in_window[None, None] & valid[:, None, None, :]

    return layout.cached(("dense_mask", window_half), build)


def eager_attention(q, k, v, layout: TokenLayout, window_half: int, dropout_p: float = 0.0) -> torch.Tensor:
    """Reference: explicit scores, -inf outside the mask, softmax in fp32."""
    qr, kr, vr = _rectangle(layout, q, k, v)
    scores = (qr @ kr.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    mask = _dense_mask(layout, window_half)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(q.dtype)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return _from_rectangle(layout, probs @ vr)


def _use_block_local(layout: TokenLayout, window_half: int) -> bool:
    # Block-local pays 3 blocks of keys per query; worth it once documents span several blocks.
    return window_half >= 0 and layout.max_seqlen > 4 * max(window_half, 1)


def _block_local_sdpa(q, k, v, layout: TokenLayout, window_half: int, dropout_p: float) -> torch.Tensor:
    index = block_local_index(layout, window_half)
    blocks, b = index.queries.shape
    heads, dim = q.shape[1], q.shape[2]

    def gather(t, slots):  # (T, h, d) -> (blocks, h, slots, d); padding slots repeat token 0, masked out
        return t[slots].transpose(1, 2)

    out = F.scaled_dot_product_attention(
        gather(q, index.queries),
        gather(k, index.keys),
        gather(v, index.keys),
        attn_mask=index.mask,
        dropout_p=dropout_p,
    )
    return out.transpose(1, 2).reshape(blocks * b, heads, dim)[index.real_queries]


def _bucket_masks(layout: TokenLayout, window_half: int) -> list[torch.Tensor | None]:
    def build():
        buckets, _ = layout.cached("buckets", lambda: document_buckets(layout))
        masks = []
        for bucket in buckets:
            length = bucket.valid.shape[1]
            if window_half < 0:
                masks.append(None if bucket.full else bucket.valid[:, None, None, :])
                continue
            pos = torch.arange(length, device=bucket.valid.device)
            near = (pos[:, None] - pos[None, :]).abs() <= window_half
            # Padding query slots attend to everything so that no softmax row is empty (output dropped).
            mask = (near[None] & bucket.valid[:, None, :]) | ~bucket.valid[:, :, None]
            masks.append(mask[:, None])
        return masks

    return layout.cached(("bucket_masks", window_half), build)


def sdpa_attention(q, k, v, layout: TokenLayout, window_half: int, dropout_p: float = 0.0) -> torch.Tensor:
    """Global layers (and local layers on short documents): one SDPA call per bucket of similar-length
    documents; local layers on long documents: block-local SDPA."""
    if _use_block_local(layout, window_half):
        return _block_local_sdpa(q, k, v, layout, window_half, dropout_p)
    masks = _bucket_masks(layout, window_half)
    outs = []
    for qb, kb, vb, mask in zip(to_buckets(layout, q), to_buckets(layout, k), to_buckets(layout, v), masks):
        out = F.scaled_dot_product_attention(
            qb.transpose(1, 2), kb.transpose(1, 2), vb.transpose(1, 2), attn_mask=mask, dropout_p=dropout_p
        )
        outs.append(out.transpose(1, 2))
    return from_buckets(layout, outs)


# ---- FlexAttention ---------------------------------------------------------------------------------------


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    # Default dynamic: the stream length changes from batch to batch; after the first recompile torch.compile
    # marks it dynamic instead of recompiling for every new length.
    return torch.compile(flex_attention)


def _flex_block_mask(layout: TokenLayout, window_half: int):
    from torch.nn.attention.flex_attention import create_block_mask

    def build():
        total = -(-layout.num_tokens // _FLEX_BLOCK) * _FLEX_BLOCK
        pad = total - layout.num_tokens
        # Padding slots get document -1 and attend to nothing, so their blocks are skipped entirely.
        doc = F.pad(layout.doc_ids, (0, pad), value=-1)
        pos = F.pad(layout.position_ids, (0, pad), value=0)

        if window_half < 0:

            def mask_mod(b, h, q_idx, kv_idx):
                return (doc[q_idx] == doc[kv_idx]) & (doc[q_idx] >= 0)

        else:

            def mask_mod(b, h, q_idx, kv_idx):
                near = (pos[q_idx] - pos[kv_idx]).abs() <= window_half
                return (doc[q_idx] == doc[kv_idx]) & (doc[q_idx] >= 0) & near

        device = layout.doc_ids.device
        return create_block_mask(mask_mod, 1, 1, total, total, device=device, _compile=device.type == "cuda")

    return layout.cached(("flex_block_mask", window_half), build)


def flex_attention(q, k, v, layout: TokenLayout, window_half: int, dropout_p: float = 0.0) -> torch.Tensor:
    if dropout_p > 0.0:
        raise NotImplementedError("the flex backend has no attention-probability dropout; use sdpa or flash")
    block_mask = _flex_block_mask(layout, window_half)
    total = block_mask.shape[-2]
    pad = total - layout.num_tokens

    def prep(t):  # (T, h, d) -> (1, h, total, d)
        return F.pad(t, (0, 0, 0, 0, 0, pad)).transpose(0, 1).unsqueeze(0)

    if q.device.type == "cuda":
        fn = _compiled_flex_attention()
    else:
        from torch.nn.attention.flex_attention import flex_attention as fn
    out = fn(prep(q), prep(k), prep(v), block_mask=block_mask)
    return out[0].transpose(0, 1)[: layout.num_tokens]


# ---- flash-attn --------------------------------------------------------------------------------------------


def flash_attention(q, k, v, layout: TokenLayout, window_half: int, dropout_p: float = 0.0) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func  # optional dependency, imported only when used

    dtype = q.dtype
    if dtype not in (torch.float16, torch.bfloat16):  # flash-attn computes in half precision only
        q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    window = (window_half, window_half) if window_half >= 0 else (-1, -1)
    out = flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens_q=layout.cu_seqlens,
        cu_seqlens_k=layout.cu_seqlens,
        max_seqlen_q=layout.max_seqlen,
        max_seqlen_k=layout.max_seqlen,
        dropout_p=dropout_p,
        causal=False,
        window_size=window,
    )
    return out.to(dtype)


ATTENTION_FUNCTIONS = {
    "flash": flash_attention,
    "flex": flex_attention,
    "sdpa": sdpa_attention,
    "eager": eager_attention,
}
