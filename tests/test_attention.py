"""Attention backends: same results as a per-document brute-force reference, window semantics, block-local cost,
backend selection; GPU-only checks (flex compiled, flash-attn, bf16, torch.compile) are marked `gpu`."""

from __future__ import annotations

import pytest
import torch
from test_model import padded_batch, randomize_

from mmbert_train.model import MMBertForMaskedLM, ModelConfig
from mmbert_train.model import attention as attn
from mmbert_train.model.layout import TokenLayout


def brute_force(q, k, v, seqlens, window_half):
    """Loop over documents and queries: softmax over the keys of the same document within the window."""
    out = torch.empty_like(q)
    start = 0
    for n in seqlens:
        for i in range(n):
            keys = [j for j in range(n) if window_half < 0 or abs(i - j) <= window_half]
            kk = k[start + torch.tensor(keys)]  # (keys, h, d)
            scores = torch.einsum("hd,khd->hk", q[start + i], kk) / q.shape[-1] ** 0.5
            out[start + i] = torch.einsum("hk,khd->hd", scores.softmax(-1), v[start + torch.tensor(keys)])
        start += n
    return out


def random_qkv(seqlens, heads=2, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    total = sum(seqlens)
    return [torch.randn(total, heads, dim, generator=gen, dtype=torch.float64) for _ in range(3)]


CPU_BACKENDS = ["eager", "sdpa", "flex"]
# torch >= 2.9 has no FlexAttention backward on CPU: flex is tested forward-only there (detected by trying it)
FLEX_CPU_BACKWARD = attn.flex_backward_supported("cpu")


def trains_on_cpu(backend: str) -> bool:
    return backend != "flex" or FLEX_CPU_BACKWARD


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("window_half", [-1, 0, 3, 8])
def test_backends_equal_brute_force(backend, window_half):
    seqlens = [37, 5, 1, 20, 44]  # 37 and 44 > 4 * 8: sdpa takes the block-local path for local layers
    q, k, v = random_qkv(seqlens, seed=window_half + 2)
    backward = trains_on_cpu(backend)
    leaves = [t.clone().requires_grad_(backward) for t in (q, k, v)]
    layout = TokenLayout.from_seqlens(torch.tensor(seqlens))
    expected = brute_force(q, k, v, seqlens, window_half)
    got = attn.ATTENTION_FUNCTIONS[backend](*leaves, layout, window_half)
    assert got.shape == q.shape
    assert (got - expected).abs().max().item() < 1e-10
    if not backward:
        return
    refs = [t.clone().requires_grad_(True) for t in (q, k, v)]
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(9), dtype=q.dtype)
    brute_force(*refs, seqlens, window_half).backward(grad)
    got.backward(grad)
    for name, leaf, ref in zip("qkv", leaves, refs):
        assert (leaf.grad - ref.grad).abs().max().item() < 1e-10, name


def saved_float_bytes(fn) -> int:
    """Bytes of the floating-point tensors autograd keeps for backward while ``fn`` runs (distinct storages)."""
    storages = {}

    def pack(t):
        if t.is_floating_point():
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("window_half", [-1, 8])
def test_sdpa_keeps_only_q_k_v_for_backward(window_half):
    """Block-local layers gather 3 copies of K and V (and buckets padded copies of Q, K, V); none is kept for
    backward: the op re-gathers from q, k, v there (its gradients equal the brute force, test above)."""
    seqlens = [300, 57, 129, 8]  # 300 > 4 * 8: block-local in the local layer; 4 buckets in the global one
    q, k, v = (t.float().requires_grad_(True) for t in random_qkv(seqlens, heads=2, dim=8))
    layout = TokenLayout.from_seqlens(torch.tensor(seqlens))
    one = q.numel() * q.element_size()
    saved = saved_float_bytes(lambda: attn.sdpa_attention(q, k, v, layout, window_half))
    assert saved == 3 * one
    plan = attn.sdpa_prepare(layout, window_half)
    # the same attention through plain autograd keeps the gathered copies
    kept = saved_float_bytes(lambda: attn._gathered_sdpa(q, k, v, *plan, 0.0))
    assert kept >= (7 if window_half >= 0 else 4) * one


@pytest.mark.parametrize(
    ("seqlens", "window_half"),
    [
        ([24, 24, 24], -1),  # one full rectangle: the identity plan, no mask at all
        ([24, 24, 24], 8),  # short documents in a local layer: one bucket, masked
        ([30, 30, 12, 12], -1),  # full buckets: no mask
        ([300, 57, 129, 8], -1),  # buckets with key masks
        ([300, 57, 129, 8], 8),  # block-local
    ],
)
def test_every_sdpa_plan_has_the_same_signature(seqlens, window_half):
    """What a compiled layer guards on is the same for every batch: four distinct index tensors (dynamo guards on
    inputs aliasing each other) and a mask of at least 2 elements (sizes 0 and 1 are specialised)."""
    layout = TokenLayout.from_seqlens(torch.tensor(seqlens))
    plan = attn.sdpa_prepare(layout, window_half)
    tensors = [plan.q_index, plan.k_index, plan.mask, plan.out_index]
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == 4
    assert plan.mask.numel() >= 2 and plan.mask.dtype == torch.bool
    assert [t.dtype for t in (plan.q_index, plan.k_index, plan.out_index)] == [torch.int64] * 3


def test_flex_training_on_cpu_without_backward_fails_early_with_our_message(monkeypatch):
    monkeypatch.setattr(attn, "flex_backward_supported", lambda device_type: False)
    config = ModelConfig.preset("tiny", attn_backend="flex")
    model = MMBertForMaskedLM(config)
    ids, mask = padded_batch(config.vocab_size, [20, 9], 0)
    with pytest.raises(
        RuntimeError, match=r"model.attn_backend='flex' cannot train on cpu.*Use attn_backend: sdpa"
    ):
        model(ids, mask, torch.where(mask.bool(), ids, -100))
    with torch.no_grad():  # inference stays possible
        assert model(ids, mask).logits.shape == (2, 20, config.vocab_size)


def test_uniform_layout_takes_the_no_padding_path():
    seqlens = [16, 16, 16]
    q, k, v = random_qkv(seqlens)
    layout = TokenLayout.from_seqlens(torch.tensor(seqlens))
    assert layout.uniform
    got = attn.sdpa_attention(q, k, v, layout, -1)
    assert (got - brute_force(q, k, v, seqlens, -1)).abs().max().item() < 1e-10


def test_local_sdpa_attends_to_a_bounded_number_of_keys(monkeypatch):
    """Block-local attention: each query block sees 3 blocks of keys, however long the document."""
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append((q.shape[-2], k.shape[-2]))
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(attn.F, "scaled_dot_product_attention", spy)
    window_half = 4
    for length in (64, 256):
        q, k, v = random_qkv([length])
        attn.sdpa_attention(q, k, v, TokenLayout.from_seqlens(torch.tensor([length])), window_half)
    assert seen == [(window_half, 3 * window_half)] * 2


def test_window_is_inclusive_half_of_local_attention():
    """Query i sees key j iff |i - j| <= local_attention // 2 (transformers' semantics)."""
    window_half, length, i = 5, 40, 20
    q, k, v = random_qkv([length])
    layout = TokenLayout.from_seqlens(torch.tensor([length]))
    base = attn.sdpa_attention(q, k, v, layout, window_half)[i]
    for j, visible in ((i + window_half, True), (i - window_half, True), (i + window_half + 1, False)):
        v2 = v.clone()
        v2[j] += 1.0
        changed = (attn.sdpa_attention(q, k, v2, layout, window_half)[i] - base).abs().max().item() > 1e-6
        assert changed == visible, j


def test_auto_selects_sdpa_on_cpu_and_flash_needs_the_package():
    assert attn.resolve_backend("auto", torch.device("cpu")) == "sdpa"
    assert attn.resolve_backend("eager", torch.device("cpu")) == "eager"
    if not attn.flash_attn_available():
        with pytest.raises(RuntimeError, match="needs the flash-attn package"):
            attn.resolve_backend("flash", torch.device("cpu"))


def test_model_backends_agree_in_forward_and_backward():
    config = ModelConfig.preset("tiny", local_attention=8)
    ids, mask = padded_batch(config.vocab_size, [70, 33, 9], 1)
    labels = torch.where(mask.bool(), ids, -100)
    results = {}
    for backend in CPU_BACKENDS:
        torch.manual_seed(0)
        model = MMBertForMaskedLM(ModelConfig(**{**config.to_dict(), "attn_backend": backend}))
        randomize_(model, 0)
        with torch.set_grad_enabled(trains_on_cpu(backend)):
            out = model(ids, mask, labels, return_logits=True)
        grads = None
        if trains_on_cpu(backend):
            out.loss.backward()
            grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results[backend] = (out.logits.detach(), grads)
    ref_logits, ref_grads = results["eager"]
    for backend in ("sdpa", "flex"):
        logits, grads = results[backend]
        assert (logits - ref_logits).abs().max().item() < 1e-4, backend
        if grads is not None:
            assert (grads - ref_grads).abs().max().item() < 1e-4, backend


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bf16_autocast_forward_and_backward(backend):
    config = ModelConfig.preset("tiny", local_attention=8, attn_backend=backend)
    torch.manual_seed(0)
    model = MMBertForMaskedLM(config)
    ids, mask = padded_batch(config.vocab_size, [50, 21], 4)
    labels = torch.where(mask.bool(), ids, -100)
    with torch.set_grad_enabled(trains_on_cpu(backend)):
        reference = model(ids, mask, labels).loss.item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids, mask, labels)
    assert abs(out.loss.item() - reference) < 0.05
    if trains_on_cpu(backend):
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# ---- GPU ------------------------------------------------------------------------------------------------------


def _gpu_model_and_batch(backend: str, dtype=torch.float32):
    config = ModelConfig.preset("tiny", local_attention=32, attn_backend=backend)
    torch.manual_seed(0)
    model = MMBertForMaskedLM(config)
    randomize_(model, 0)
    ids, mask = padded_batch(config.vocab_size, [300, 129, 64, 7], 2)
    return model.cuda().to(dtype), ids.cuda(), mask.cuda()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["flex", "flash"])
def test_gpu_backends_match_sdpa(backend):
    if backend == "flash" and not attn.flash_attn_available():
        pytest.skip("flash-attn is not installed")
    ref_model, ids, mask = _gpu_model_and_batch("sdpa")
    model, _, _ = _gpu_model_and_batch(backend)
    with torch.no_grad():
        ref = ref_model(ids, mask).logits
        got = model(ids, mask).logits
    tol = 1e-4 if backend == "flex" else 5e-2  # flash-attn computes attention in bf16
    assert (got - ref)[mask.bool()].abs().max().item() < tol


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["flex", "sdpa"])
def test_gpu_bf16_compiled_training_steps_reduce_the_loss(backend):
    model, ids, mask = _gpu_model_and_batch(backend)
    labels = torch.where(mask.bool() & (torch.rand(ids.shape, device="cuda") < 0.3), ids, -100)
    compiled = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = compiled(ids, mask, labels).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0]
