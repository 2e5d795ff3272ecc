"""Rotary position embedding (RoPE), rotate-half convention (Llama, GPT-NeoX).

A head vector x of even size D is split into halves x1 = x[:D/2], x2 = x[D/2:]; position p
rotates each pair (x1[i], x2[i]) by the angle p·θ_i, θ_i = base^(-2i/D):

    x'[i]       = x1[i]·cos(pθ_i) − x2[i]·sin(pθ_i)
    x'[i + D/2] = x2[i]·cos(pθ_i) + x1[i]·sin(pθ_i)

The GPT-J ("interleaved") convention pairs x[2i] with x[2i+1] instead; the two give the same
attention scores after a fixed permutation of the head dimensions, but weights trained with
one must be used with the same one.

Kernels read the precomputed tables ``cos, sin: [max_len, D/2] float32`` (see :func:`rope_tables`).
"""

from __future__ import annotations

import torch


def rope_tables(max_len: int, head_dim: int, *, base: float = 10000.0, device=None,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each [max_len, head_dim // 2] (float32 by default), computed in float64."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(max_len, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().to(device=device, dtype=dtype), angles.sin().to(device=device, dtype=dtype)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [..., D] at integer ``positions`` (broadcastable to x.shape[:-1]) — the reference.

    Computes in float32 (float64 if x is float64) and returns x's dtype.
    """
    D = x.shape[-1]
    if D % 2:
        raise ValueError(f"the last dimension of x must be even for RoPE, got {D}")
    if cos.shape[-1] != D // 2:
        raise ValueError(f"cos/sin tables have {cos.shape[-1]} columns, expected head_dim // 2 = {D // 2}")
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    positions = positions.long().to(cos.device)
    if positions.numel() and int(positions.max()) >= cos.shape[0]:
        raise ValueError(f"position {int(positions.max())} is beyond the tables' {cos.shape[0]} rows")
    c = cos[positions].to(x.device, work)
    s = sin[positions].to(x.device, work)
    x1, x2 = x[..., : D // 2].to(work), x[..., D // 2:].to(work)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)
