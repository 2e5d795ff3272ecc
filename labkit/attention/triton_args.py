"""Argument checks for the Triton decode kernels: every bad input fails here, naming itself.

A kernel given the wrong dtype, shape or device either crashes the process (an unmasked
address) or returns a silently wrong answer; these checks run on the host, cost no device
sync for GPU tensors, and say what was expected.
"""

from __future__ import annotations

import math

import torch

from labkit import runtime
from labkit.attention.validate import check_out, check_tensor, validate_decode


def check_rope(rope, B: int, D: int, device) -> tuple:
    """Validate ``rope = (cos, sin, positions)``: fp32 [max_len, D/2] tables, int32 [B] positions."""
    try:
        cos, sin, positions = rope
    except (TypeError, ValueError):
        raise TypeError("rope must be a tuple (cos, sin, positions)") from None
    check_tensor("rope cos", cos, ndim=2, dtypes=(torch.float32,), device=device)
    check_tensor("rope sin", sin, ndim=2, dtypes=(torch.float32,), device=device)
    check_tensor("rope positions", positions, ndim=1, dtypes=(torch.int32,), device=device)
    if cos.shape != sin.shape or cos.shape[1] != D // 2:
        raise ValueError(f"rope cos and sin must both be [max_len, D/2={D // 2}], got "
                         f"{tuple(cos.shape)} and {tuple(sin.shape)}")
    if positions.shape[0] != B:
        raise ValueError(f"rope positions must have shape [{B}], got {tuple(positions.shape)}")
    if positions.device.type == "cpu" and positions.numel():  # checking values costs a sync on a GPU
        lo, hi = int(positions.min()), int(positions.max())
        if lo < 0 or hi >= cos.shape[0]:
            raise ValueError(f"rope positions must lie in [0, {cos.shape[0]}), got {lo} to {hi}")
    return cos, sin, positions


def prepare(q, k, v, scale, lengths, rope, out, head_dims):
    """Validate contiguous-cache inputs; return ``((B, Hq, Hkv, T, D), scale, lengths, rope, out)``."""
    device = runtime.device()
    B, Hq, Hkv, T, D = validate_decode(q, k, v, head_dims=head_dims, device=device, lengths=lengths)
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    if lengths is not None:
        if lengths.dtype != torch.int32:
            raise TypeError(f"lengths must be int32, got {str(lengths.dtype).replace('torch.', '')}")
        if lengths.device.type == "cpu":  # checking values costs a sync on a GPU, nothing on the CPU
            lo, hi = int(lengths.min()), int(lengths.max())
            if lo < 1 or hi > T:
                raise ValueError(f"lengths must lie in [1, T={T}], got values from {lo} to {hi}")
    rope = check_rope(rope, B, D, device) if rope is not None else None
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    return (B, Hq, Hkv, T, D), scale, lengths, rope, check_out(out, q)
