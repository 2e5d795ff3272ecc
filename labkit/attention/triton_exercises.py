"""Notebook 03's exercise kernels: their signatures, grids and launchers.

A student writes three ``@triton.jit`` kernels; the checks in :mod:`labkit.checks.nb03` and the
notebook's demos launch them through the functions here, so a kernel only has to follow its
signature (arguments in this order; the ``tl.constexpr`` ones are passed by name).

``one_pass_kernel(Q, K, V, Out, scale, T, HQ, GROUP, HEAD_DIM, BLOCK_T)``
    grid ``(B·Hq,)``: program ``pid`` computes query head ``h = pid % HQ`` of sequence
    ``b = pid // HQ``, reading KV head ``h // GROUP`` — the whole sequence in one pass with an
    online softmax, ``BLOCK_T`` tokens at a time.

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


__all__ = ["launch_merge", "launch_one_pass", "launch_split", "partial_buffers", "split_and_merge"]
