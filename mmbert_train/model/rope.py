"""Rotary position embeddings on the full head dimension (the "rotate half" layout used by ModernBERT).

For a head dim ``d`` and base ``theta``: ``inv_freq_k = theta ** (-2k / d)`` for ``k = 0 .. d/2 - 1``; at position
``p`` the angles are ``a = p * inv_freq`` repeated twice (``cat(a, a)``), and a vector ``x`` becomes
``x * cos(a) + rotate_half(x) * sin(a)`` with ``rotate_half([x1, x2]) = [-x2, x1]``.
Positions restart at 0 for every document, so RoPE never leaks information across packed documents.
"""

from __future__ import annotations

import torch


def inverse_frequencies(head_dim: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (theta**exponents)


def rotary_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape ``(num_tokens, head_dim)`` for integer ``positions`` of shape ``(num_tokens,)``.

    Computed in fp32 (also under autocast) and cast to ``dtype`` afterwards, like transformers does.
    """
    with torch.autocast(device_type=positions.device.type, enabled=False):
        inv_freq = inverse_frequencies(head_dim, theta, positions.device)
        angles = positions.float()[:, None] * inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape ``(num_tokens, ..., head_dim)`` with tables of shape ``(num_tokens, head_dim)``."""
    shape = (cos.shape[0],) + (1,) * (x.dim() - 2) + (cos.shape[-1],)
    return x * cos.view(shape) + rotate_half(x) * sin.view(shape)
