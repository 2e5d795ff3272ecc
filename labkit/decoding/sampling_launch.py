"""Launching top-p sampling kernels: :func:`sample_top_p` launches any kernel with notebook 06's
exercise signature (labkit's own is :mod:`labkit.decoding.sampling_bisect`); the tile size.

:func:`~labkit.decoding.sampling_keys.ordered_key`, the float key the kernels search over, is
re-exported here for the notebook.
"""

from __future__ import annotations

import torch
import triton

from labkit.decoding.sampling_keys import ordered_key


def _block_v(V: int) -> int:
    return min(4096, max(16, triton.next_power_of_2(V)))


def sample_top_p(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 0.9, seed: int = 0, *,
                 num_samples: int = 1, kernel=None) -> torch.Tensor:
    """Launch a kernel with :func:`labkit.decoding.sampling_bisect.top_p_sample_kernel`'s signature
    (default: that one), one program per row of ``logits [B, V]`` (any float dtype) -> int64 ``[B]``
    (``[B, num_samples]`` when ``num_samples > 1``; ``[]`` for one row ``[V]``)."""
    from labkit.decoding.sampling import check_sampling

    check_sampling(temperature, None, top_p)
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (0 is greedy: use logits.argmax(-1))")
    rows = logits.reshape(1, -1) if logits.dim() == 1 else logits
    if rows.dim() != 2:
        raise ValueError(f"logits must be [V] or [B, V], got {list(logits.shape)}")
    rows = rows if rows.stride(-1) == 1 else rows.contiguous()
    B, V = rows.shape
    S = triton.next_power_of_2(num_samples)
    if num_samples < 1 or S * B * V >= 2**31:
        raise ValueError(f"num_samples must be >= 1 with num_samples * B * V < 2**31, got {num_samples}")
    out = torch.full((B, S), -1, dtype=torch.int64, device=rows.device)
    block_v = _block_v(V) if S == 1 else max(16, min(_block_v(V), 8192 // S))
    if kernel is None:
        from labkit.decoding.sampling_bisect import top_p_sample_kernel as kernel
    kernel[(B,)](rows, out, V, rows.stride(0), 1.0 / temperature, float(top_p), int(seed) & 0x7FFFFFFF,
                 BLOCK_V=block_v, SAMPLES=S)
    out = out[:, :num_samples]
    out = out[:, 0] if num_samples == 1 else out
    return out[0] if logits.dim() == 1 else out


__all__ = ["ordered_key", "sample_top_p"]
