"""The masked-LM loss of the tied decoder, in chunks of labelled tokens: never the full ``(n, vocab)`` logits.

For head outputs ``h (n, H)``, the tied decoder ``W (V, H)`` with bias ``b (V,)`` and targets ``t (n,)``::

    z_i   = W h_i + b                                  (matmul in the compute dtype: bf16 under autocast)
    lse_i = log sum_v exp(z_iv)                        (fp32)
    loss_sum = sum_i (lse_i - z_{i, t_i}),   correct = #{i : argmax_v z_iv = t_i}

Backward, with ``g`` the gradient of ``loss_sum`` and ``p_i = softmax(z_i)`` (recomputed chunk by chunk from the
saved ``h`` and ``lse``)::

    dz_i = g (p_i - onehot(t_i));   dh_i = W^T dz_i;   dW = sum_i dz_i h_i^T;   db = sum_i dz_i

Memory: one chunk's logits at a time, ``chunk_size x V`` in the compute dtype plus an fp32 copy (forward) or
the fp32 softmax and its compute-dtype cast (backward), instead of the whole ``n x V`` logits, their fp32 copy
and their gradient. Pure PyTorch, the same on CPU and GPU; implemented as a torch custom op so that
torch.compile treats it as one opaque call (the chunk loop's length depends on ``n``, which varies by batch).
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK_SIZE = 4096  # labelled tokens per chunk: 4096 x 256,000 logits = 2 GiB in bf16 (+4 GiB fp32)


def _chunks(n: int, chunk_size: int):
    for start in range(0, n, chunk_size):
        yield start, min(start + chunk_size, n)


def _logits(h, weight, bias):
    return torch.addmm(bias.to(h.dtype), h, weight.t())


@torch.library.custom_op("mmbert::linear_cross_entropy", mutates_args=())
def _linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = h.shape[0]
    loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
    correct = torch.zeros((), dtype=torch.int64, device=h.device)
    lse = torch.empty(n, dtype=torch.float32, device=h.device)
    with torch.autocast(h.device.type, enabled=False):
        for start, end in _chunks(n, chunk_size):
            logits = _logits(h[start:end], weight, bias)
            target = targets[start:end]
            correct += (logits.argmax(dim=-1) == target).sum()
            logits = logits.float()
            lse[start:end] = torch.logsumexp(logits, dim=-1)
            loss_sum += (lse[start:end] - logits.gather(1, target[:, None])[:, 0]).sum()
    return loss_sum, correct, lse


@_linear_cross_entropy.register_fake
def _(h, weight, bias, targets, chunk_size):
    n = h.shape[0]
    return (
        h.new_empty((), dtype=torch.float32),
        h.new_empty((), dtype=torch.int64),
        h.new_empty((n,), dtype=torch.float32),
    )


@torch.library.custom_op("mmbert::linear_cross_entropy_backward", mutates_args=())
def _linear_cross_entropy_backward(
    grad: torch.Tensor,
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = h.shape[0]
    grad_h = torch.empty_like(h)
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
    scale = grad.float()
    with torch.autocast(h.device.type, enabled=False):
        for start, end in _chunks(n, chunk_size):
            h_c = h[start:end]
            probs = _logits(h_c, weight, bias).float()
            probs.sub_(lse[start:end, None]).exp_()  # softmax from the saved log-sum-exp
            rows = torch.arange(end - start, device=h.device)
            probs[rows, targets[start:end]] -= 1.0
            probs.mul_(scale)
            grad_b += probs.sum(dim=0)
            dz = probs.to(h.dtype)
            del probs
            grad_h[start:end] = dz @ weight.to(h.dtype)
            if h.dtype == torch.float32:
                grad_w.addmm_(dz.t(), h_c)
            else:
                grad_w += (dz.t() @ h_c).float()
    return grad_h, grad_w.to(weight.dtype), grad_b.to(bias.dtype)


@_linear_cross_entropy_backward.register_fake
def _(grad, h, weight, bias, targets, lse, chunk_size):
    return torch.empty_like(h), torch.empty_like(weight), torch.empty_like(bias)


def _setup_context(ctx, inputs, output):
    h, weight, bias, targets, chunk_size = inputs
    ctx.save_for_backward(h, weight, bias, targets, output[2])
    ctx.chunk_size = chunk_size


def _backward(ctx, grad_loss, grad_correct, grad_lse):
    h, weight, bias, targets, lse = ctx.saved_tensors
    grad_h, grad_w, grad_b = _linear_cross_entropy_backward(grad_loss, h, weight, bias, targets, lse, ctx.chunk_size)
    return grad_h, grad_w, grad_b, None, None


_linear_cross_entropy.register_autograd(_backward, setup_context=_setup_context)


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss_sum, correct)`` of the decoder ``h W^T + b`` against ``targets`` (see the module docstring).

    ``compute_dtype``: the matmuls' dtype (the autocast dtype under autocast; default ``h``'s); the log-sum-exp,
    the target logit and the sums are fp32, the gradients of ``W`` and ``b`` accumulate in fp32.
    """
    if chunk_size < 1:
        raise ValueError(f"loss_chunk_size must be >= 1, got {chunk_size}")
    dtype = compute_dtype or h.dtype
    loss_sum, correct, _ = _linear_cross_entropy(
        h.to(dtype).contiguous(), weight.to(dtype), bias, targets, int(chunk_size)
    )
    return loss_sum, correct
