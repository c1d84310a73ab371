"""The flash backend's contract with flash-attn, checked on CPU: a stand-in `flash_attn` module whose
`flash_attn_varlen_func` follows flash-attn's documented semantics strictly (and refuses anything else) and
computes the attention from a plain per-document reference. A wrong call from our side fails here."""

from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest
import torch
from test_attention import brute_force, random_qkv
from test_model import padded_batch, randomize_

from mmbert_train.model import MMBertForMaskedLM, ModelConfig
from mmbert_train.model import attention as attn
from mmbert_train.model.layout import TokenLayout

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    block_table=None,
):
    """flash-attn 2's documented interface: q (total_q, nheads, d), k / v (total_k, nheads_k, d), fp16 / bf16;
    cu_seqlens int32 (batch + 1,) starting at 0; max_seqlen Python ints; window_size (left, right), -1 = no
    limit: query i attends key j iff i - left <= j <= i + right (and j <= i when causal)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        assert t.dim() == 3, f"{name} must be (total, nheads, headdim), got {tuple(t.shape)}"
        assert t.dtype in (torch.float16, torch.bfloat16), (
            f"{name}: flash-attn supports fp16/bf16, got {t.dtype}"
        )
        assert t.stride(-1) == 1, f"{name} must be contiguous in the last dimension"
    assert q.dtype == k.dtype == v.dtype
    for name, cu, total in (
        ("cu_seqlens_q", cu_seqlens_q, q.shape[0]),
        ("cu_seqlens_k", cu_seqlens_k, k.shape[0]),
    ):
        assert isinstance(cu, torch.Tensor) and cu.dtype == torch.int32 and cu.dim() == 1, (
            f"{name}: int32 (b+1,)"
        )
        assert int(cu[0]) == 0 and int(cu[-1]) == total, f"{name} must run from 0 to {total}"
    for name, value, cu in (
        ("max_seqlen_q", max_seqlen_q, cu_seqlens_q),
        ("max_seqlen_k", max_seqlen_k, cu_seqlens_k),
    ):
        assert type(value) is int, f"{name} must be a Python int, got {type(value).__name__}"
        assert value >= int((cu[1:] - cu[:-1]).max()), f"{name} {value} is below the longest sequence"
    assert isinstance(window_size, tuple) and len(window_size) == 2
    assert all(type(w) is int and w >= -1 for w in window_size), f"bad window_size {window_size}"
    assert dropout_p == 0.0 and not return_attn_probs and alibi_slopes is None and softcap == 0.0
    left, right = window_size
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    out = []
    for start, end in zip(cu_seqlens_q[:-1].tolist(), cu_seqlens_q[1:].tolist()):
        qd, kd, vd = (t[start:end].float() for t in (q, k, v))
        i = torch.arange(end - start)[:, None]
        j = torch.arange(end - start)[None, :]
        allowed = torch.ones(end - start, end - start, dtype=torch.bool)
        if left >= 0:
            allowed &= j >= i - left
        if right >= 0:
            allowed &= j <= i + right
        if causal:
            allowed &= j <= i
        scores = torch.einsum("ihd,jhd->hij", qd, kd) * scale
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        out.append(torch.einsum("hij,jhd->ihd", probs, vd))
    return torch.cat(out).to(q.dtype)


@pytest.fixture
def stand_in(monkeypatch):
    module = types.ModuleType("flash_attn")
    module.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    module.flash_attn_varlen_func = flash_attn_varlen_func
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    monkeypatch.setattr(attn, "FLASH_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(attn, "_FLASH_FN", None)  # resolved again against the stand-in
    return module


@pytest.mark.parametrize("window_half", [-1, 0, 3, 8])
def test_flash_backend_calls_flash_attn_as_documented(stand_in, window_half):
    seqlens = [37, 5, 1, 20, 44]
    q, k, v = (t.float().requires_grad_(True) for t in random_qkv(seqlens, seed=window_half + 5))
    layout = TokenLayout.from_seqlens(torch.tensor(seqlens))
    out = attn.flash_attention(q, k, v, layout, window_half)
    assert attn.flash_registers_custom_op() is False and attn._FLASH_FN is attn._flash_varlen_op
    # computed in bf16, returned in the input dtype
    assert out.dtype == torch.float32 and out.shape == q.shape
    leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    expected = brute_force(*leaves, seqlens, window_half)
    assert (out.double() - expected).abs().max().item() < 3e-2
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(grad)
    expected.backward(grad.double())
    for got, ref in zip((q, k, v), leaves):
        assert (got.grad.double() - ref.grad).abs().max().item() < 5e-2


def test_model_with_flash_matches_sdpa_in_forward_and_backward(stand_in):
    config = ModelConfig.preset("tiny", local_attention=8)
    ids, mask = padded_batch(config.vocab_size, [70, 33, 9], 1)
    labels = torch.where(mask.bool(), ids, -100)
    results = {}
    for backend in ("sdpa", "flash"):
        model = MMBertForMaskedLM(ModelConfig(**{**config.to_dict(), "attn_backend": backend}))
        randomize_(model, 0)
        out = model(ids, mask, labels)
        out.loss.backward()
        results[backend] = (out.loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()]))
    (ref_loss, ref_grads), (loss, grads) = results["sdpa"], results["flash"]
    assert abs(loss - ref_loss) < 1e-2 * ref_loss
    assert (grads - ref_grads).abs().max().item() < 2e-2 * ref_grads.abs().max().item()


def test_a_wrong_call_fails_on_cpu(stand_in, monkeypatch):
    """The stand-in rejects what real flash-attn would reject: int64 cu_seqlens, fp32, a tensor max_seqlen."""
    seqlens = [9, 4]
    q, k, v = (t.float() for t in random_qkv(seqlens))
    layout = TokenLayout.from_seqlens(torch.tensor(seqlens))
    bad = attn.FlashInputs(layout.cu_seqlens.long(), layout.max_seqlen)
    with pytest.raises(AssertionError, match="int32"):
        attn.flash_run(q, k, v, bad, -1)
    # the stand-in itself is strict about what our custom-op wrapper normalises (bf16 inputs, Python ints)
    half = [t.bfloat16() for t in (q, k, v)]
    with pytest.raises(AssertionError, match="Python int"):
        flash_attn_varlen_func(*half, layout.cu_seqlens, layout.cu_seqlens, torch.tensor(9), 9)
    with pytest.raises(AssertionError, match="fp16/bf16"):
        flash_attn_varlen_func(q, k, v, layout.cu_seqlens, layout.cu_seqlens, 9, 9)
    with pytest.raises(AssertionError, match="window_size"):
        flash_attn_varlen_func(*half, layout.cu_seqlens, layout.cu_seqlens, 9, 9, window_size=(-2, 3))


@pytest.mark.slow
def test_compiled_flash_layers_stop_compiling_after_the_second_batch(stand_in):
    """Regional compilation with the flash backend (through our custom-op wrapper around the stand-in), inductor
    on CPU: the layers pass ``max_seqlen`` to flash-attn as a Python int, so the second batch (another longest
    document) recompiles the layer graphs with it symbolic (dynamo's automatic dynamic shapes); after that,
    batches of other token, document and longest-document counts compile nothing, with no graph break, and the
    losses equal eager's. (The GPU check warms up for 12 steps before it counts.)"""
    from test_compile import compiled_pair
    from torch._dynamo.utils import counters

    from mmbert_train.train.testing import packed_batches

    eager, compiled, backend = compiled_pair("inductor", num_hidden_layers=7, attn_backend="flash")
    batches = packed_batches(8, 4, 96, 512, seed=3, max_docs=8)
    assert len({int(b["doc_lens"].max()) for b in batches}) > 4  # the longest document changes
    frames = []
    for batch in batches:
        losses = []
        for model in (compiled, eager):
            model.zero_grad(set_to_none=True)
            out = model(
                batch["input_ids"], batch["attention_mask"], batch["labels"], doc_lens=batch["doc_lens"]
            )
            out.loss.backward()
            losses.append(out.loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-5)
        frames.append(backend.frame_count)
    # embeddings, final norm, head + loss; layer 0, global and local layers (the window is flash's argument), and
    # in the second batch the layer graphs again with max_seqlen (and, depending on what inductor's graph cache
    # holds, the window) symbolic: 7 to 9 graphs, then none.
    assert frames[1:] == [frames[1]] * 7 and frames[1] <= 9, frames
    assert dict(counters["graph_break"]) == {}
