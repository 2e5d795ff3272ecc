"""Notebook 03's exercise kernels: their signatures, grids and launchers.

A student writes a warm-up kernel and three attention ``@triton.jit`` kernels; the checks in :mod:`labkit.checks.nb03` and the
notebook's demos launch them through the functions here, so a kernel only has to follow its
signature (arguments in this order; the ``tl.constexpr`` ones are passed by name).

``one_pass_kernel(Q, K, V, Out, scale, T, HQ, GROUP, HEAD_DIM, BLOCK_T)``
    grid ``(B·Hq,)``: program ``pid`` computes query head ``h = pid % HQ`` of sequence
    ``b = pid // HQ``, reading KV head ``h // GROUP`` — the whole sequence in one pass with an
    online softmax, ``BLOCK_T`` tokens at a time.

``tile_copy_kernel(X, Y, P, M, N, stride_x, stride_y, BLOCK_M, BLOCK_N)`` (warm-up)
    grid ``(cdiv(M, BLOCK_M), cdiv(N, BLOCK_N))``: program ``(i, j)`` copies the
    ``[BLOCK_M, BLOCK_N]`` tile at rows ``i·BLOCK_M …``, columns ``j·BLOCK_N …`` of X [M, N]
    (row stride ``stride_x``) to Y (row stride ``stride_y``), masked at the edges, and writes
    its program number ``i·cdiv(N, BLOCK_N) + j`` into P (Y's layout) for every element it
    wrote. :func:`launch_tile_copy`.

``gqa_split_kernel(Q, K, V, M, L, Acc, scale, T, chunk, num_splits, GROUP, GROUP_P, HEAD_DIM, BLOCK_T)``
    grid ``(B·Hkv, num_splits)``: program ``(pid, s)`` reads chunk ``s`` of KV head ``pid`` (row
    ``pid`` of K, V viewed as [B·Hkv, T, D]) once and serves all ``GROUP`` query heads that
    share it, rows ``pid·GROUP + g`` of Q viewed as [B·Hq, D], as one ``[GROUP_P, HEAD_DIM]``
    tile (``GROUP_P``: GROUP rounded up to a power of two; rows ≥ GROUP masked). It writes the
    same partials as ``split_kernel``. :func:`launch_gqa_split`.

``split_kernel(Q, K, V, M, L, Acc, scale, T, chunk, num_splits, HQ, GROUP, HEAD_DIM, BLOCK_T)``
    grid ``(B·Hq, num_splits)``: program ``(pid, s)`` covers tokens
    ``[s·chunk, min((s+1)·chunk, T))`` (``chunk = ceil(T / num_splits)``, see
    :func:`labkit.attention.splits.chunk_bounds`) and writes its partial state, natural-log
    domain: ``M[pid, s] = m``, ``L[pid, s] = l``, ``Acc[pid, s, :] = acc``. An empty chunk
    writes m = −inf, l = 0, acc = 0.

``merge_kernel(M, L, Acc, Out, num_splits, HEAD_DIM, SPLITS_P)``
    grid ``(B·Hq,)``: program ``row`` merges the ``num_splits`` partials of its row into
    ``Out[row, :]`` by log-sum-exp. ``SPLITS_P`` is num_splits rounded up to a power of two.

Q, K, V and Out are contiguous ([B, Hq, D], [B, Hkv, T, D], [B, Hkv, T, D], [B, Hq, D]);
M, L are fp32 [B, Hq, S] and Acc fp32 [B, Hq, S, D]. ``HEAD_DIM`` is D (a power of two).
"""

from __future__ import annotations

import math

import torch
import triton

from labkit import runtime


def _dims(q, k):
    B, Hq, D = q.shape
    return B, Hq, k.shape[1], k.shape[2], D


def launch_one_pass(kernel, q, k, v, out, *, block_t: int = 16, scale: float | None = None):
    """Run a one-pass kernel into ``out`` [B, Hq, D] (q's dtype) and return ``out``."""
    B, Hq, Hkv, T, D = _dims(q, k)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    kernel[(B * Hq,)](q, k, v, out, scale, T, HQ=Hq, GROUP=Hq // Hkv, HEAD_DIM=D, BLOCK_T=block_t)
    return out


def launch_split(kernel, q, k, v, m, l, acc, *, block_t: int = 16, scale: float | None = None):
    """Run a split kernel with ``num_splits = m.shape[-1]``; it fills m, l [B, Hq, S] and acc [B, Hq, S, D]."""
    B, Hq, Hkv, T, D = _dims(q, k)
    num_splits = m.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    chunk = math.ceil(T / num_splits)
    kernel[(B * Hq, num_splits)](q, k, v, m, l, acc, scale, T, chunk, num_splits,
                                 HQ=Hq, GROUP=Hq // Hkv, HEAD_DIM=D, BLOCK_T=block_t)
    return m, l, acc


def launch_merge(kernel, m, l, acc, out):
    """Run a merge kernel: partials m, l [B, Hq, S], acc [B, Hq, S, D] (fp32) into ``out`` [B, Hq, D]."""
    B, Hq, num_splits = m.shape
    kernel[(B * Hq,)](m, l, acc, out, num_splits, HEAD_DIM=acc.shape[-1],
                      SPLITS_P=triton.next_power_of_2(num_splits))
    return out


def launch_gqa_split(kernel, q, k, v, m, l, acc, *, block_t: int = 16, scale: float | None = None,
                     num_warps: int | None = None):
    """Run a GQA split kernel with ``num_splits = m.shape[-1]``: one program per (KV head, chunk)."""
    B, Hq, Hkv, T, D = _dims(q, k)
    num_splits = m.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    chunk = math.ceil(T / num_splits)
    group = Hq // Hkv
    extra = {} if num_warps is None else {"num_warps": num_warps}
    kernel[(B * Hkv, num_splits)](q, k, v, m, l, acc, scale, T, chunk, num_splits,
                                  GROUP=group, GROUP_P=triton.next_power_of_2(group), HEAD_DIM=D, BLOCK_T=block_t, **extra)
    return m, l, acc


def gqa_split_and_merge(gqa_kernel, merge_kernel, q, k, v, num_splits: int, *, block_t: int = 16, out=None,
                        num_warps: int | None = None):
    """Flash-decoding with GQA from the exercise kernels: group partials, then the merge. Returns [B, Hq, D]."""
    B, Hq, Hkv, T, D = _dims(q, k)
    m, l, acc = partial_buffers(B, Hq, num_splits, D)
    launch_gqa_split(gqa_kernel, q, k, v, m, l, acc, block_t=block_t, num_warps=num_warps)
    return launch_merge(merge_kernel, m, l, acc, torch.empty_like(q) if out is None else out)


def launch_tile_copy(kernel, x, *, block_m: int, block_n: int, pad: int | None = None):
    """Run the warm-up tile-copy kernel on ``x`` [M, N] (any row stride, unit column stride).

    Y and P are ``[M, N]`` views into buffers ``pad`` rows and columns larger, poisoned (NaN
    and −1), so a store past the edges lands in the padding, where the check sees it, instead
    of crashing. Returns ``(y, p, y_buffer, p_buffer)``.
    """
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError("x must be 2-D with contiguous rows")
    M, N = x.shape
    pad = max(block_m, block_n) if pad is None else pad
    ybuf = torch.full((M + pad, N + pad), float("nan"), dtype=x.dtype, device=x.device)
    pbuf = torch.full((M + pad, N + pad), -1, dtype=torch.int32, device=x.device)
    y, p = ybuf[:M, :N], pbuf[:M, :N]
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    kernel[grid](x, y, p, M, N, x.stride(0), y.stride(0), BLOCK_M=block_m, BLOCK_N=block_n)
    return y, p, ybuf, pbuf


def partial_buffers(B: int, Hq: int, num_splits: int, D: int, *, fill: float = float("nan")):
    """fp32 m, l [B, Hq, S] and acc [B, Hq, S, D] on labkit's device, filled with ``fill`` (NaN: poisoned)."""
    device = runtime.device()
    m = torch.full((B, Hq, num_splits), fill, dtype=torch.float32, device=device)
    return m, m.clone(), torch.full((B, Hq, num_splits, D), fill, dtype=torch.float32, device=device)


def split_and_merge(split_kernel, merge_kernel, q, k, v, num_splits: int, *, block_t: int = 16):
    """Flash-decoding from the two exercise kernels: partials, then the merge. Returns [B, Hq, D]."""
    B, Hq, Hkv, T, D = _dims(q, k)
    m, l, acc = partial_buffers(B, Hq, num_splits, D)
    launch_split(split_kernel, q, k, v, m, l, acc, block_t=block_t)
    return launch_merge(merge_kernel, m, l, acc, torch.empty_like(q))


__all__ = ["gqa_split_and_merge", "launch_gqa_split", "launch_merge", "launch_one_pass", "launch_split",
           "launch_tile_copy", "partial_buffers", "split_and_merge"]
