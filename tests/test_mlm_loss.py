"""The chunked masked-LM loss: the same loss, accuracy counts and gradients as the plain full-logits path, without
ever forming the (n_labelled, vocab) logits."""

from __future__ import annotations

import pytest
import torch
from test_model import padded_batch, random_config, randomize_
from torch.utils._python_dispatch import TorchDispatchMode

from mmbert_train.model import MMBertForMaskedLM, ModelConfig
from mmbert_train.model.mlm_loss import linear_cross_entropy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def labelled_batch(config: ModelConfig, lengths, seed: int, ratio: float = 0.3):
    ids, mask = padded_batch(config.vocab_size, lengths, seed)
    gen = torch.Generator().manual_seed(seed + 100)
    labels = torch.where((torch.rand(ids.shape, generator=gen) < ratio) & mask.bool(), ids, -100)
    return ids.masked_fill(labels != -100, config.mask_token_id), mask, labels


def loss_and_grads(model, ids, mask, labels, **kwargs):
    model.zero_grad(set_to_none=True)
    out = model(ids, mask, labels, **kwargs)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return out, grads


def assert_close_relative(got: torch.Tensor, expected: torch.Tensor, rel: float, what: str):
    """``|got - expected| <= rel |expected|`` in the 2-norm (element-wise maxima are at fp32's ulp noise here)."""
    error = (got.double() - expected.double()).norm().item()
    assert error <= rel * max(expected.double().norm().item(), 1e-30), (
        what,
        error / expected.double().norm().item(),
    )


@pytest.mark.parametrize(
    "seed, chunk",
    [(0, 1), (1, 7), (2, 64), (3, 10_000)],  # 7 and 64 do not divide the labelled count; 10,000 > all of it
)
def test_loss_counts_and_all_gradients_equal_the_plain_path(seed, chunk):
    config = random_config(seed, loss_chunk_size=chunk, attn_backend="sdpa")
    torch.manual_seed(seed)
    model = MMBertForMaskedLM(config)
    randomize_(model, seed)
    ids, mask, labels = labelled_batch(config, [41, 30, 57], seed)
    n = int((labels != -100).sum())
    assert n % 7 and n % 64 and n < 10_000
    plain, plain_grads = loss_and_grads(model, ids, mask, labels, return_logits=True)
    chunked, chunked_grads = loss_and_grads(model, ids, mask, labels)
    assert chunked.logits is None and plain.logits.shape == (n, config.vocab_size)
    assert abs(chunked.loss.item() - plain.loss.item()) <= 1e-6 * abs(plain.loss.item())
    expected_correct = int((plain.logits.argmax(-1) == labels[labels != -100]).sum())
    assert int(chunked.num_correct) == expected_correct and int(chunked.num_labelled) == n
    for name, grad in plain_grads.items():
        # The head's own gradients (what the chunked op computes) agree to 1e-6. Below the head, fp32 backprop
        # through the layers amplifies the ~1e-7 rounding difference of the hidden-state gradient: the deepest norm
        # weights land at 1.0-1.1e-6 on some torch builds (2.14), so layer parameters get 1e-5.
        rel = 1e-5 if name.startswith("model.layers.") else 1e-6
        assert_close_relative(chunked_grads[name], grad, rel, name)


def test_direct_call_equals_cross_entropy_of_full_logits_in_float64():
    gen = torch.Generator().manual_seed(0)
    n, hidden, vocab = 37, 16, 101
    h = torch.randn(n, hidden, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(vocab, hidden, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(vocab, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, vocab, (n,), generator=gen)
    loss_sum, correct = linear_cross_entropy(h, w, b, t, chunk_size=5)
    expected = torch.nn.functional.cross_entropy(h @ w.T + b, t, reduction="sum")
    assert correct.dtype == torch.int64 and int(correct) == int(((h @ w.T + b).argmax(-1) == t).sum())
    # log-sum-exp and sums are fp32 by design: agreement to fp32 precision
    assert abs(loss_sum.item() - expected.item()) <= 1e-5 * abs(expected.item())
    g = torch.autograd.grad(3.0 * loss_sum, (h, w, b))
    g_ref = torch.autograd.grad(3.0 * expected, (h, w, b))
    for got, ref, name in zip(g, g_ref, "hwb"):
        assert got.dtype == torch.float64
        assert_close_relative(got, ref, 1e-6, name)
    with pytest.raises(ValueError, match="loss_chunk_size must be >= 1, got 0"):
        linear_cross_entropy(h, w, b, t, chunk_size=0)


def test_compiled_chunks_equal_eager_and_do_not_recompile_as_the_labelled_count_changes():
    """`compile_regions` asks the loss op to compile each chunk's softmax gradient (inductor): the same loss,
    counts and gradients as eager (fp32, 1e-5), and one graph for every chunk length (dynamic) except a chunk of
    one labelled token, which torch.compile specialises once (sizes 0 and 1 are never dynamic)."""
    from torch._dynamo.utils import counters

    from mmbert_train.model.mlm_loss import _fused_chunk

    gen = torch.Generator().manual_seed(3)
    hidden, vocab, chunk = 16, 203, 24
    w = torch.randn(vocab, hidden, generator=gen, requires_grad=True)
    b = torch.randn(vocab, generator=gen, requires_grad=True)
    _fused_chunk.cache_clear()
    torch._dynamo.reset()
    start, frames = counters["stats"]["unique_graphs"], []
    for n in (61, 50, 97, 30, 75):  # chunks of 24 and a remainder 13, 2, 1, 6, 3
        h = torch.randn(n, hidden, generator=gen, requires_grad=True)
        t = torch.randint(0, vocab, (n,), generator=gen)
        results = {}
        for backend in ("", "inductor"):
            loss_sum, correct = linear_cross_entropy(h, w, b, t, chunk_size=chunk, compile_backend=backend)
            results[backend] = (loss_sum, correct, *torch.autograd.grad(2.0 * loss_sum, (h, w, b)))
        eager, fused = results[""], results["inductor"]
        assert int(fused[1]) == int(eager[1])
        for got, ref, name in zip(fused[:1] + fused[2:], eager[:1] + eager[2:], ["loss", "h", "w", "b"]):
            assert_close_relative(got, ref, 1e-5, name)
        frames.append(counters["stats"]["unique_graphs"] - start)
    # chunk lengths 24, 13 | 24, 2 | 24, 1 (the one specialisation) | 24, 6 | 24, 3
    assert frames == [1, 1, 2, 2, 2], frames


def test_empty_selection_gives_zero_loss_and_zero_gradients_like_the_plain_path():
    config = ModelConfig.preset("tiny", loss_chunk_size=8)
    model = MMBertForMaskedLM(config)
    randomize_(model, 1)
    ids, mask = padded_batch(config.vocab_size, [20, 13], 1)
    labels = torch.full_like(ids, -100)
    plain, plain_grads = loss_and_grads(model, ids, mask, labels, return_logits=True)
    chunked, chunked_grads = loss_and_grads(model, ids, mask, labels)
    assert chunked.loss.item() == plain.loss.item() == 0.0
    assert int(chunked.num_correct) == int(chunked.num_labelled) == 0
    for name, grad in plain_grads.items():
        assert torch.equal(chunked_grads[name], torch.zeros_like(grad)), name
        assert torch.equal(grad, chunked_grads[name]), name


def test_bf16_autocast_within_bf16_tolerance():
    config = ModelConfig.preset("tiny", loss_chunk_size=16, attn_backend="sdpa")
    torch.manual_seed(0)
    model = MMBertForMaskedLM(config)
    randomize_(model, 2)
    ids, mask, labels = labelled_batch(config, [60, 44, 31], 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain, plain_grads = loss_and_grads(model, ids, mask, labels, return_logits=True)
        chunked, chunked_grads = loss_and_grads(model, ids, mask, labels)
    fp32, _ = loss_and_grads(model, ids, mask, labels)
    assert abs(chunked.loss.item() - plain.loss.item()) <= 1e-2 * plain.loss.item()
    assert abs(chunked.loss.item() - fp32.loss.item()) <= 2e-2 * fp32.loss.item()
    for name, grad in plain_grads.items():
        assert chunked_grads[name].dtype == torch.float32
        assert_close_relative(chunked_grads[name], grad, 3e-2, name)


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_forms_more_than_one_chunk_of_logits():
    vocab, chunk = 4000, 32
    config = ModelConfig.preset("tiny", vocab_size=vocab, loss_chunk_size=chunk)
    model = MMBertForMaskedLM(config)
    ids, mask, labels = labelled_batch(config, [120, 100, 90], 3, ratio=0.5)
    n = int((labels != -100).sum())
    assert n > 4 * chunk
    sizes = {}
    for mode, kwargs in (("plain", {"return_logits": True}), ("chunked", {})):
        with LargestTensor() as spy:
            model(ids, mask, labels, **kwargs).loss.backward()
        sizes[mode] = spy.largest
    assert sizes["plain"] >= n * vocab
    # one chunk of logits is the largest thing, next to the (vocab, hidden) weight gradient
    assert sizes["chunked"] <= max(chunk * vocab, vocab * config.hidden_size)
