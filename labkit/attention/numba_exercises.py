"""Notebook 02's exercise kernels: how they are launched.

Warm-up (02.block_reduce): ``block_reduce_kernel(x, row_max, row_sum, touched)``, one block per
row of ``x`` [R, N] (float32) and ``threads`` threads, reduces its row in shared memory:
``row_max[r] = max_c x[r, c]``, ``row_sum[r] = Σ_c exp(x[r, c] − row_max[r])``, and records
which thread read each element in ``touched[r, c]`` (int32). :func:`launch_block_reduce`.

A student writes ``fused_decode_kernel(q, k, v, out, scale)``, a Numba CUDA kernel with one
block per (sequence, query head) that streams K and V once with an online softmax (no split).
The checks in :mod:`labkit.checks.nb02` and the notebook's demos launch it through
:func:`launch_one_pass`, so the kernel only has to follow that signature.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from labkit import runtime
from labkit.attention.validate import FP16_FP32, validate_decode
from labkit.attention.numba_bridge import launch


def launch_one_pass(kernel, q, k, v, *, scale: float | None = None, threads: int, max_head_dim: int = 128):
    """Launch notebook 02's exercise kernel: one block per (sequence, query head), no split.

    ``kernel(q, k, v, out, scale)`` with q: [B, Hq, D]; k, v: [B, Hkv, T, D] (fp16 or fp32,
    D <= ``max_head_dim``); grid ``(B * Hq,)``, block ``(threads,)``, on torch's stream. The
    output [B, Hq, D] (q's dtype) starts full of NaN, so any element the kernel never
    writes shows up in a check.
    """
    B, Hq, Hkv, T, D = validate_decode(q, k, v, dtypes=FP16_FP32, device=runtime.device())
    if D > max_head_dim:
        raise ValueError(f"head dim {D} is larger than the kernel's shared query buffer ({max_head_dim})")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    out = torch.full_like(q, float("nan"))
    launch(kernel, B * Hq, threads, q, k, v, out, np.float32(scale))
    return out


def launch_block_reduce(kernel, x, *, threads: int):
    """Launch the warm-up kernel on ``x`` [R, N]: grid ``(R,)``, block ``(threads,)``.

    Returns ``(row_max [R], row_sum [R], touched [R, N])``; the outputs start as NaN and
    ``touched`` as −1, so anything the kernel never writes shows up.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be [rows, N], got shape {tuple(x.shape)}")
    x = x.to(runtime.device(), torch.float32).contiguous()
    R, N = x.shape
    row_max = torch.full((R,), float("nan"), dtype=torch.float32, device=x.device)
    row_sum = torch.full_like(row_max, float("nan"))
    touched = torch.full((R, N), -1, dtype=torch.int32, device=x.device)
    launch(kernel, R, threads, x, row_max, row_sum, touched)
    if runtime.MODE == "gpu":
        torch.cuda.synchronize()
    return row_max, row_sum, touched


__all__ = ["launch_block_reduce", "launch_one_pass"]
