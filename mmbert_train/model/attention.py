"""Self-attention on unpadded tokens, with four interchangeable backends.

Every backend takes ``q, k, v`` of shape ``(num_tokens, heads, head_dim)`` (RoPE already applied) and returns
``(num_tokens, heads, head_dim)``. Tokens attend only inside their own document; in local layers
(``window_half >= 0``) query ``i`` also sees key ``j`` only iff ``|i - j| <= window_half``.

Each backend has two halves, so that the per-layer tensor work can run inside a compiled region
(`mmbert_train.model.compile_regions`) while the host-side layout work runs once per batch, outside it:

- ``prepare(layout, window_half)``: host side, once per batch and window (cached on the `TokenLayout`): index
  tensors, masks, ``cu_seqlens`` / ``max_seqlen``, FlexAttention's block mask;
- ``run(q, k, v, prepared, window_half, dropout_p)``: tensor work only, traceable by torch.compile without a graph
  break. ``attention(name)(q, k, v, layout, window_half)`` composes the two.

- ``flash``: flash-attn's ``flash_attn_varlen_func`` on the flat stream, ``window_size=(w, w)``. CUDA, fp16/bf16.
  Recent flash-attn registers it as a torch custom op; for older versions we wrap it in one (`_flash_varlen_op`).
- ``flex``: PyTorch FlexAttention on the flat stream with a document (+ sliding-window) block mask; compiled on
  CUDA. On CPU it runs PyTorch's unfused reference implementation (correct, quadratic: tests only); torch >= 2.9
  has no FlexAttention backward on CPU at all (`flex_backward_supported`), so training with it there is refused.
- ``sdpa``: ``F.scaled_dot_product_attention`` on gathered rectangles, as one custom op (``mmbert::gathered_sdpa``)
  that receives the index tensors and keeps only ``q, k, v`` for backward (it re-gathers and recomputes the
  attention forward there): global layers (and local layers when every document is short) group documents into
  buckets of similar length, one padded rectangle per bucket; local layers when the longest document exceeds
  ``4w`` (``w = local_attention // 2``) use block-local attention — each document is cut into blocks of ``w``
  tokens and each block attends only to the ``3w`` keys of itself and its two neighbours (masked to
  ``|i - j| <= w``), so the cost grows linearly with length instead of quadratically.
- ``eager``: an explicit ``softmax(q k^T / sqrt(d) + mask) v`` reference on the rectangle (not for compilation).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from .layout import TokenLayout, block_local_index, document_buckets

BACKENDS = ("flash", "flex", "sdpa", "eager")
_FLEX_BLOCK = 128  # FlexAttention's default block size; the flat stream is padded to a multiple of it
FLASH_DEVICE_TYPES = ("cuda",)  # flash-attn runs on CUDA only (tests substitute a CPU stand-in)


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def flex_attention_available() -> bool:
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


@functools.cache
def flex_backward_supported(device_type: str) -> bool:
    """Whether FlexAttention can back-propagate on this device type, found by trying it once on a tiny input
    (torch 2.5-2.8 run an unfused reference with autograd on CPU; torch >= 2.9 raise NotImplementedError)."""
    if device_type == "cuda":
        return True
    from torch.nn.attention.flex_attention import flex_attention as flex

    q = torch.zeros(1, 1, _FLEX_BLOCK, 8, device=device_type, requires_grad=True)
    try:
        flex(q, q, q).sum().backward()
    except NotImplementedError:
        return False
    return True


def check_trainable(backend: str, device: torch.device | str) -> None:
    """Raise a clear error when ``backend`` cannot train (back-propagate) on ``device``."""
    device_type = torch.device(device).type
    if backend == "flex" and not flex_backward_supported(device_type):
        raise RuntimeError(
            f"model.attn_backend='flex' cannot train on {device_type}: this torch ({torch.__version__}) has no "
            f"FlexAttention backward on {device_type}. Use attn_backend: sdpa (or auto, which picks sdpa off "
            "CUDA); flex remains usable there for inference"
        )


def resolve_backend(requested: str, device: torch.device) -> str:
    """``auto``: flash-attn when installed and on CUDA, else FlexAttention on CUDA, else sdpa."""
    if requested != "auto":
        if requested == "flash" and not flash_attn_available():
            raise RuntimeError(
                "attn_backend='flash' needs the flash-attn package (pip install 'mmbert-train[gpu]')"
            )
        if requested == "flash" and device.type not in FLASH_DEVICE_TYPES:
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


# ---- eager reference --------------------------------------------------------------------------------------


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


def eager_prepare(layout: TokenLayout, window_half: int) -> TokenLayout:
    _dense_mask(layout, window_half)
    return layout


def eager_run(q, k, v, layout: TokenLayout, window_half: int, dropout_p: float = 0.0) -> torch.Tensor:
    """Reference: explicit scores, -inf outside the mask, softmax in fp32."""
    qr, kr, vr = (layout.to_padded(t).transpose(1, 2) for t in (q, k, v))
    scores = (qr @ kr.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    mask = _dense_mask(layout, window_half)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(q.dtype)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return layout.from_padded((probs @ vr).transpose(1, 2))


# ---- sdpa: gathered rectangles as one custom op -------------------------------------------------------------


class SdpaPlan(NamedTuple):
    """Rectangles of gathered tokens for sdpa, all index tensors concatenated (a fixed number of inputs whatever
    the number of rectangles, so a compiled region sees the same signature for every batch).

    ``meta`` (int64, host): ``[identity, n_rects, (rows, q_len, k_len, mask_kind) per rectangle]``; ``identity``
    = 1 when the stream is already one full rectangle (no gather); ``mask_kind`` -1 none, 0 key-only
    ``(rows, 1, 1, k_len)``, 1 full ``(rows, 1, q_len, k_len)``. ``q_index`` / ``k_index``: token of each query /
    key slot (padding slots point at token 0 and are masked as keys); ``mask``: the rectangles' boolean masks
    flattened (True = attend); ``out_index``: for each token of the stream, its query slot.

    Every plan has the same signature for torch.compile, whatever the batch: four distinct index tensors (never
    one tensor passed twice: dynamo guards on aliasing between inputs) and a mask of at least `_MASK_PAD`
    elements (dynamo specialises sizes 0 and 1). Otherwise a global layer would get one graph for batches whose
    documents all have one length (the identity plan, no mask) and another for the rest, and a local layer one
    for bucket plans (``q_index is k_index``) and another for block-local plans.
    """

    q_index: torch.Tensor
    k_index: torch.Tensor
    mask: torch.Tensor
    out_index: torch.Tensor
    meta: torch.Tensor


_MASK_PAD = 2  # trailing unused mask elements: the mask is never of size 0 or 1 (see SdpaPlan)


def _padded_mask(masks: list[torch.Tensor], device) -> torch.Tensor:
    return torch.cat(masks + [torch.ones(_MASK_PAD, dtype=torch.bool, device=device)])


def _use_block_local(layout: TokenLayout, window_half: int) -> bool:
    # Block-local pays 3 blocks of keys per query; worth it once documents span several blocks.
    return window_half >= 0 and layout.max_seqlen > 4 * max(window_half, 1)


def _bucket_plan(layout: TokenLayout, window_half: int) -> SdpaPlan:
    buckets, inverse = layout.cached("buckets", lambda: document_buckets(layout))
    device = layout.cu_seqlens.device
    meta = [0, len(buckets)]
    masks = []
    for bucket in buckets:
        rows, length = bucket.valid.shape
        if window_half < 0:
            kind, mask = (-1, None) if bucket.full else (0, bucket.valid)
        else:
            pos = torch.arange(length, device=device)
            near = (pos[:, None] - pos[None, :]).abs() <= window_half
            # Padding query slots attend to everything so that no softmax row is empty (output dropped).
            kind, mask = 1, (near[None] & bucket.valid[:, None, :]) | ~bucket.valid[:, :, None]
        meta += [rows, length, length, kind]
        if mask is not None:
            masks.append(mask.flatten())
    mask = _padded_mask(masks, device)
    if layout.uniform and len(buckets) == 1 and window_half < 0:
        meta[0] = 1
        # Unused, but three distinct tensors: the same signature as the gather case (see SdpaPlan).
        q_index, k_index, out_index = (torch.arange(layout.num_tokens, device=device) for _ in range(3))
        return SdpaPlan(q_index, k_index, mask, out_index, torch.tensor(meta))
    index = torch.cat([b.gather.flatten() for b in buckets])
    slots = torch.cat([b.valid.flatten() for b in buckets]).nonzero().flatten()  # query slots, bucket order
    out_index = slots if inverse is None else slots[inverse]
    return SdpaPlan(index, index.clone(), mask, out_index, torch.tensor(meta))  # clone: see SdpaPlan


def _block_local_plan(layout: TokenLayout, window_half: int) -> SdpaPlan:
    index = block_local_index(layout, window_half)
    blocks, b = index.queries.shape
    meta = torch.tensor([0, 1, blocks, b, 3 * b, 1])
    out_index = index.real_queries.nonzero().flatten()  # blocks are in stream order
    mask = _padded_mask([index.mask.flatten()], index.mask.device)
    return SdpaPlan(index.queries.flatten(), index.keys.flatten(), mask, out_index, meta)


def sdpa_prepare(layout: TokenLayout, window_half: int) -> SdpaPlan:
    def build():
        if _use_block_local(layout, window_half):
            return _block_local_plan(layout, window_half)
        return _bucket_plan(layout, window_half)

    return layout.cached(("sdpa_plan", window_half), build)


def _gathered_sdpa(q, k, v, q_index, k_index, mask, out_index, meta, dropout_p: float) -> torch.Tensor:
    """The attention of `SdpaPlan`: gather, one SDPA call per rectangle, back to stream order."""
    values = meta.tolist()
    identity, n_rects = values[0], values[1]
    heads, dim = q.shape[1], q.shape[2]
    if identity:
        rows, length = values[2], values[3]
        out = F.scaled_dot_product_attention(
            *(t.view(rows, length, heads, dim).transpose(1, 2) for t in (q, k, v)), dropout_p=dropout_p
        )
        return out.transpose(1, 2).reshape(q.shape)
    # index_select, not advanced indexing: its backward is index_add_, ~3x faster on CPU than the accumulating
    # index_put_ that q[index]'s backward runs (block-local keys repeat each token 3 times).
    qs, ks, vs = q.index_select(0, q_index), k.index_select(0, k_index), v.index_select(0, k_index)
    rects = [values[2 + 4 * r : 6 + 4 * r] for r in range(n_rects)]  # (rows, q_len, k_len, kind)
    # split, not slices: a slice's backward writes its gradient into zeros the size of the whole stream, once per
    # rectangle; split's backward is one concatenation.
    q_parts = qs.split([rows * q_len for rows, q_len, _, _ in rects])
    k_sizes = [rows * k_len for rows, _, k_len, _ in rects]
    outs, m_off = [], 0
    for (rows, q_len, k_len, kind), q_r, k_r, v_r in zip(
        rects, q_parts, ks.split(k_sizes), vs.split(k_sizes)
    ):
        rect_mask = None
        if kind >= 0:
            shape = (rows, 1, q_len if kind == 1 else 1, k_len)
            size = shape[0] * shape[2] * shape[3]
            rect_mask, m_off = mask[m_off : m_off + size].view(shape), m_off + size
        out = F.scaled_dot_product_attention(
            q_r.view(rows, q_len, heads, dim).transpose(1, 2),
            k_r.view(rows, k_len, heads, dim).transpose(1, 2),
            v_r.view(rows, k_len, heads, dim).transpose(1, 2),
            attn_mask=rect_mask,
            dropout_p=dropout_p,
        )
        outs.append(out.transpose(1, 2).reshape(rows * q_len, heads, dim))
    return torch.cat(outs).index_select(0, out_index)


@torch.library.custom_op("mmbert::gathered_sdpa", mutates_args=())
def gathered_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_index: torch.Tensor,
    k_index: torch.Tensor,
    mask: torch.Tensor,
    out_index: torch.Tensor,
    meta: torch.Tensor,
) -> torch.Tensor:
    return _gathered_sdpa(q, k, v, q_index, k_index, mask, out_index, meta, 0.0)


@gathered_sdpa.register_fake
def _(q, k, v, q_index, k_index, mask, out_index, meta):
    return torch.empty_like(q)


@contextlib.contextmanager
def _autograd_inside_custom_op():
    """Record autograd again inside a custom op's implementation, which the dispatcher runs with the autograd
    keys excluded: the recomputing backward ops below differentiate their own forward."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in (torch._C.DispatchKey.AutogradFunctionality, torch._C.DispatchKey.AutogradOther):
        exclude = exclude.remove(key)
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude):
        with torch.enable_grad():
            yield


@torch.library.custom_op("mmbert::gathered_sdpa_backward", mutates_args=())
def gathered_sdpa_backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_index: torch.Tensor,
    k_index: torch.Tensor,
    mask: torch.Tensor,
    out_index: torch.Tensor,
    meta: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Recompute: the gathered copies (3 of K and V in block-local layers) are never kept between passes.
    with _autograd_inside_custom_op():
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        out = _gathered_sdpa(*leaves, q_index, k_index, mask, out_index, meta, 0.0)
        dq, dk, dv = torch.autograd.grad(out, leaves, grad)
    return dq, dk, dv


@gathered_sdpa_backward.register_fake
def _(grad, q, k, v, q_index, k_index, mask, out_index, meta):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _sdpa_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _sdpa_backward(ctx, grad):
    q, k, v, *plan = ctx.saved_tensors
    dq, dk, dv = gathered_sdpa_backward(grad.contiguous(), q, k, v, *plan)
    return dq, dk, dv, None, None, None, None, None


gathered_sdpa.register_autograd(_sdpa_backward, setup_context=_sdpa_setup_context)


def sdpa_run(q, k, v, plan: SdpaPlan, window_half: int, dropout_p: float = 0.0) -> torch.Tensor:
    """Global layers (and local layers on short documents): one SDPA call per bucket of similar-length
    documents; local layers on long documents: block-local SDPA. See `SdpaPlan`."""
    if dropout_p > 0.0:
        # Probability dropout cannot be recomputed identically in backward: plain autograd (keeps the gathers).
        return _gathered_sdpa(q, k, v, *plan, dropout_p)
    # Contiguous copies: v is a view of the fused qkv projection, which saving it would keep alive whole.
    return gathered_sdpa(q.contiguous(), k.contiguous(), v.contiguous(), *plan)


# ---- FlexAttention ---------------------------------------------------------------------------------------


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    # Default dynamic: the stream length changes from batch to batch; after the first recompile torch.compile
    # marks it dynamic instead of recompiling for every new length.
    return torch.compile(flex_attention)


def flex_prepare(layout: TokenLayout, window_half: int):
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


def flex_run(q, k, v, block_mask, window_half: int, dropout_p: float = 0.0) -> torch.Tensor:
    if dropout_p > 0.0:
        raise NotImplementedError("the flex backend has no attention-probability dropout; use sdpa or flash")
    total = block_mask.shape[-2]
    num_tokens = q.shape[0]

    def prep(t):  # (T, h, d) -> (1, h, total, d)
        return F.pad(t, (0, 0, 0, 0, 0, total - num_tokens)).transpose(0, 1).unsqueeze(0)

    if torch.compiler.is_compiling() or q.device.type != "cuda":
        from torch.nn.attention.flex_attention import flex_attention as fn  # traced by the enclosing compile
    else:
        fn = _compiled_flex_attention()
    out = fn(prep(q), prep(k), prep(v), block_mask=block_mask)
    return out[0].transpose(0, 1)[:num_tokens]


# ---- flash-attn --------------------------------------------------------------------------------------------


class FlashInputs(NamedTuple):
    cu_seqlens: torch.Tensor  # int32 (num_docs + 1,)
    max_seqlen: int


def _flash_window(window_half: int) -> tuple[int, int]:
    return (window_half, window_half) if window_half >= 0 else (-1, -1)


def _flash_varlen_call(q, k, v, cu_seqlens, max_seqlen: int, window_half: int, dropout_p: float):
    from flash_attn import flash_attn_varlen_func  # optional dependency, imported only when used

    return flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens_q=cu_seqlens,
        cu_seqlens_k=cu_seqlens,
        max_seqlen_q=max_seqlen,
        max_seqlen_k=max_seqlen,
        dropout_p=dropout_p,
        causal=False,
        window_size=_flash_window(window_half),
    )


def flash_registers_custom_op() -> bool:
    """Recent flash-attn (>= 2.7) registers its varlen kernels as torch custom ops, so torch.compile traces its
    ``flash_attn_varlen_func`` without a graph break; older versions need our wrapper."""
    import flash_attn  # noqa: F401  (registers the ops on import)

    try:
        torch.ops.flash_attn._flash_attn_varlen_forward  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


@torch.library.custom_op("mmbert::flash_varlen", mutates_args=())
def _flash_varlen_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    window_half: int,
    dropout_p: float,
) -> torch.Tensor:
    with torch.no_grad():
        return _flash_varlen_call(q, k, v, cu_seqlens, max_seqlen, window_half, dropout_p)


@_flash_varlen_op.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, window_half, dropout_p):
    return torch.empty_like(q)


@torch.library.custom_op("mmbert::flash_varlen_backward", mutates_args=())
def _flash_varlen_backward_op(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    window_half: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Backward through flash-attn's own autograd function (one forward recomputation; no private API used).
    with _autograd_inside_custom_op():
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        out = _flash_varlen_call(*leaves, cu_seqlens, max_seqlen, window_half, 0.0)
        dq, dk, dv = torch.autograd.grad(out, leaves, grad)
    return dq, dk, dv


@_flash_varlen_backward_op.register_fake
def _(grad, q, k, v, cu_seqlens, max_seqlen, window_half):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _flash_setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, max_seqlen, window_half, dropout_p = inputs
    if dropout_p > 0.0:
        raise NotImplementedError(
            "attention_dropout > 0 with flash needs a flash-attn that registers its own custom op (>= 2.7)"
        )
    ctx.save_for_backward(q, k, v, cu_seqlens)
    ctx.max_seqlen, ctx.window_half = max_seqlen, window_half


def _flash_backward(ctx, grad):
    q, k, v, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = _flash_varlen_backward_op(
        grad.contiguous(), q, k, v, cu_seqlens, ctx.max_seqlen, ctx.window_half
    )
    return dq, dk, dv, None, None, None, None


_flash_varlen_op.register_autograd(_flash_backward, setup_context=_flash_setup_context)


_FLASH_FN = None  # flash-attn's own function (registers custom ops) or our custom-op wrapper; set by prepare


def _flash_function():
    global _FLASH_FN
    if _FLASH_FN is None:
        _FLASH_FN = _flash_varlen_call if flash_registers_custom_op() else _flash_varlen_op
    return _FLASH_FN


def flash_prepare(layout: TokenLayout, window_half: int) -> FlashInputs:
    _flash_function()  # resolved on the host, so that compiled code only reads it
    return FlashInputs(layout.cu_seqlens, int(layout.max_seqlen))


def flash_run(q, k, v, inputs: FlashInputs, window_half: int, dropout_p: float = 0.0) -> torch.Tensor:
    dtype = q.dtype
    if dtype not in (torch.float16, torch.bfloat16):  # flash-attn computes in half precision only
        q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    fn = _FLASH_FN if _FLASH_FN is not None else _flash_function()
    out = fn(q, k, v, inputs.cu_seqlens, inputs.max_seqlen, window_half, dropout_p)
    return out.to(dtype)


# ---- registry ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionBackend:
    prepare: Any  # (layout, window_half) -> what `run` takes; host side, cached on the layout
    run: Any  # (q, k, v, prepared, window_half, dropout_p) -> (num_tokens, heads, head_dim)

    def __call__(self, q, k, v, layout: TokenLayout, window_half: int, dropout_p: float = 0.0):
        return self.run(q, k, v, self.prepare(layout, window_half), window_half, dropout_p)


ATTENTION_BACKENDS = {
    "flash": AttentionBackend(flash_prepare, flash_run),
    "flex": AttentionBackend(flex_prepare, flex_run),
    "sdpa": AttentionBackend(sdpa_prepare, sdpa_run),
    "eager": AttentionBackend(eager_prepare, eager_run),
}
# ``ATTENTION_FUNCTIONS[name](q, k, v, layout, window_half, dropout_p)``: prepare + run in one call.
ATTENTION_FUNCTIONS = ATTENTION_BACKENDS
flash_attention = ATTENTION_BACKENDS["flash"]
flex_attention = ATTENTION_BACKENDS["flex"]
sdpa_attention = ATTENTION_BACKENDS["sdpa"]
eager_attention = ATTENTION_BACKENDS["eager"]
