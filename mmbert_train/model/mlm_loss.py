"""The masked-LM loss of the tied decoder, in chunks of labelled tokens: never the full ``(n, vocab)`` logits.

For head outputs ``h (n, H)``, the tied decoder ``W (V, H)`` with bias ``b (V,)`` and targets ``t (n,)``::

    z_i   = W h_i + b                                  (matmul in the compute dtype: bf16 under autocast)
    lse_i = log sum_v exp(z_iv)                        (fp32)
    loss_sum = sum_i (lse_i - z_{i, t_i}),   correct = #{i : argmax_v z_iv = t_i}

and its gradients, with ``p_i = softmax(z_i)`` (fp32)::

    dz_i = p_i - onehot(t_i);   dh_i = W^T dz_i;   dW = sum_i dz_i h_i^T;   db = sum_i dz_i

The loss is linear in its incoming gradient ``g`` (a scalar), so the gradients are computed in the same chunk loop
as the loss, while each chunk's logits are at hand, and backward only scales them by ``g`` — the "fused linear
cross-entropy" of liger-kernel, in plain PyTorch. Recomputing the chunks in backward instead would cost a fourth
``n x V x H`` matmul; keeping ``dh (n, H)``, ``dW (V, H)`` and ``db`` until backward costs about one copy of the
embedding matrix. They are computed only when autograd needs them (``torch.is_grad_enabled()`` and an input
requiring grad).

Memory: one chunk's logits at a time, ``chunk_size x V`` in the compute dtype plus their fp32 softmax (6 bytes per
element under bf16 autocast, 4 in fp32), instead of the whole ``n x V`` logits, their fp32 copy, the log-softmax
and its gradient. Pure PyTorch, the same on CPU and GPU; a torch custom op, so that torch.compile treats it as one
opaque call (the chunk loop's length depends on ``n``, which varies by batch).

Compiled (`compile_regions`): each chunk's elementwise work (argmax, log-softmax, target logit, ``softmax -
onehot``, the bias gradient's column sums) is one inductor kernel (`_fused_chunk`, dynamic chunk length) instead of
~8 eager passes over the logits; it holds the chunk's logits and ``dz`` in the compute dtype (4 bytes per element
under bf16, 8 in fp32) and no fp32 softmax.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.flop_counter import register_flop_formula

DEFAULT_CHUNK_SIZE = 4096  # labelled tokens per chunk: 4096 x 256,000 logits = 2 GiB in bf16 (+4 GiB fp32)


def _chunks(n: int, chunk_size: int):
    for start in range(0, n, chunk_size):
        yield start, min(start + chunk_size, n)


def _chunk_softmax_grad(logits: torch.Tensor, target: torch.Tensor, out_dtype: torch.dtype):
    """One chunk's loss terms from its logits ``z (c, V)``: ``(loss_sum, correct, dz, db)`` with
    ``dz = softmax(z) - onehot(t)`` in ``out_dtype`` (the matmuls' dtype) and ``db = sum_i dz_i`` in fp32.

    Elementwise and reductions only (the matmuls stay outside): what inductor fuses into a few passes over the
    ``c x V`` logits when the model's regions are compiled (`_fused_chunk`), instead of eager's ~8.
    """
    correct = (logits.argmax(dim=-1) == target).sum()
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    loss_sum = -log_probs.gather(1, target[:, None]).sum()
    probs = log_probs.exp()
    dz = probs - torch.nn.functional.one_hot(target, probs.shape[1]).to(probs.dtype)
    return loss_sum, correct, dz.to(out_dtype), dz.sum(dim=0)


@functools.cache
def _fused_chunk(backend: str):
    """`_chunk_softmax_grad` compiled (dynamic chunk length): used inside the loss op when the model's regions are
    compiled. The op itself stays opaque to the outer graph (its chunk loop depends on the batch); this inner
    compile runs at call time, once per chunk shape class."""
    return torch.compile(_chunk_softmax_grad, backend=backend, dynamic=True)


@torch.library.custom_op("mmbert::linear_cross_entropy", mutates_args=())
def _linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int,
    with_grad: bool,
    compile_backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss_sum, correct, dh, dW, db)``; the last three are empty unless ``with_grad``. ``compile_backend``:
    a torch.compile backend for each chunk's elementwise work (`_fused_chunk`), or "" for eager."""
    n = h.shape[0]
    loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
    correct = torch.zeros((), dtype=torch.int64, device=h.device)
    if with_grad:
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
    else:
        grad_h, grad_w, grad_b = (t.new_empty(0) for t in (h, weight, bias))
    low_bias = bias.to(h.dtype)
    fused = _fused_chunk(compile_backend) if compile_backend else None
    for start, end in _chunks(n, chunk_size):
        h_c, target = h[start:end], targets[start:end]
        logits = torch.addmm(low_bias, h_c, weight.t())  # compute dtype
        if fused is not None and with_grad:
            chunk_loss, chunk_correct, dz, db = fused(logits, target, h.dtype)
            del logits
            loss_sum += chunk_loss
            correct += chunk_correct
            grad_b += db
        else:
            correct += (logits.argmax(dim=-1) == target).sum()
            logits = logits.float()
            lse = torch.logsumexp(logits, dim=-1)
            loss_sum += (lse - logits.gather(1, target[:, None])[:, 0]).sum()
            if not with_grad:
                continue
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the fp32 logits
            probs[torch.arange(end - start, device=h.device), target] -= 1.0
            grad_b += probs.sum(dim=0)
            dz = probs.to(h.dtype)
            del logits, probs
        grad_h[start:end] = dz @ weight
        if h.dtype == torch.float32:
            grad_w.addmm_(dz.t(), h_c)
        else:
            grad_w += (dz.t() @ h_c).float()
    if with_grad:
        grad_w, grad_b = grad_w.to(weight.dtype), grad_b.to(bias.dtype)
    return loss_sum, correct, grad_h, grad_w, grad_b


@_linear_cross_entropy.register_fake
def _(h, weight, bias, targets, chunk_size, with_grad, compile_backend):
    grads = (torch.empty_like(t) if with_grad else t.new_empty(0) for t in (h, weight, bias))
    return (h.new_empty((), dtype=torch.float32), h.new_empty((), dtype=torch.int64), *grads)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*output[2:])


def _backward(ctx, grad_loss, grad_correct, *unused):
    grad_h, grad_w, grad_b = ctx.saved_tensors
    if grad_h.numel() == 0 and grad_w.numel() == 0:
        raise RuntimeError("linear_cross_entropy ran without with_grad but is being differentiated")
    scale = grad_loss.float()
    # In place: these buffers are ours alone (outputs nobody else reads), so no second (vocab, hidden) copy.
    return grad_h.mul_(scale), grad_w.mul_(scale), grad_b.mul_(scale), None, None, None, None


_linear_cross_entropy.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.mmbert.linear_cross_entropy)
def _flops(
    h_shape,
    weight_shape,
    bias_shape,
    targets_shape,
    chunk_size,
    with_grad,
    compile_backend,
    out_shape=None,
    **kwargs,
):
    """For torch.utils.flop_counter (MFU checks): the logits matmul, plus dh and dW when the gradients are made."""
    n, hidden = h_shape
    return 2 * n * weight_shape[0] * hidden * (3 if with_grad else 1)


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    compute_dtype: torch.dtype | None = None,
    compile_backend: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss_sum, correct)`` of the decoder ``h W^T + b`` against ``targets`` (see the module docstring).

    ``compute_dtype``: the matmuls' dtype (the autocast dtype under autocast; default ``h``'s); the log-sum-exp,
    the target logit and the sums are fp32, the gradients of ``W`` and ``b`` accumulate in fp32.
    ``compile_backend``: compile each chunk's softmax-gradient work with this torch.compile backend (what
    `compile_regions` asks for), or "" to run it eagerly.
    """
    if chunk_size < 1:
        raise ValueError(f"loss_chunk_size must be >= 1, got {chunk_size}")
    dtype = compute_dtype or h.dtype
    with_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad or bias.requires_grad)
    loss_sum, correct, *_ = _linear_cross_entropy(
        h.to(dtype).contiguous(), weight.to(dtype), bias, targets, int(chunk_size), with_grad, compile_backend
    )
    return loss_sum, correct
