"""Top-p sampling by plain bisection, one program per row: the simplest kernel that needs no sort.

Notebook 06's exercise has this shape: find the row's max and softmax normaliser in one pass,
then bisect over the logits' ordered bits (:func:`labkit.decoding.sampling_keys.ordered_key`),
one full pass over the row per step (about 33 passes), for the largest threshold ``t`` whose
tokens ``{x >= t}`` hold at least ``top_p`` of the mass; then draw among them with the
Gumbel-max trick. :func:`labkit.decoding.sampling_launch.sample_top_p` launches any kernel of
this signature.
:mod:`labkit.decoding.sampling_triton` is the fast version (NPIV thresholds a pass, a shrinking
candidate set, top-k too).
"""

from __future__ import annotations

import triton
import triton.language as tl

from labkit.decoding.sampling_keys import ordered_key


@triton.jit
def top_p_sample_kernel(
    logits_ptr,  # [B, V] logits, row b at logits_ptr + b * stride_b, tokens contiguous
    out_ptr,  # [B, SAMPLES] int64: SAMPLES independent draws from row b
    V, stride_b,  # vocabulary size; row stride
    inv_temp,  # 1 / temperature
    top_p,  # keep the most likely tokens whose probability reaches top_p
    seed,  # draw s of row b uses tl.rand(seed, (b * SAMPLES + s) * V + token)
    BLOCK_V: tl.constexpr,  # tokens per tile (a power of two)
    SAMPLES: tl.constexpr,  # draws per row (a power of two)
):
    """Top-p sampling by plain bisection (one pass per step): the notebook's exercise, simplest form.

    :func:`labkit.decoding.sampling_triton.top_k_top_p_sample_kernel` is the fast one.
    """
    b = tl.program_id(0)
    row_ptr = logits_ptr + b.to(tl.int64) * stride_b
    m = tl.full([], float("-inf"), tl.float32)  # the row's largest logit so far
    z = tl.zeros([], tl.float32)  # Σ exp((x - m) / T), rescaled whenever m grows
    kmin = tl.full([], 2147483647, tl.int32)  # smallest and largest ordered_key(x)
    kmax = tl.full([], -2147483648, tl.int32)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        valid = offs < V
        x = tl.load(row_ptr + offs, mask=valid, other=float("-inf")).to(tl.float32)
        key = ordered_key(x)
        kmin = tl.minimum(kmin, tl.min(tl.where(valid, key, 2147483647), axis=0))
        kmax = tl.maximum(kmax, tl.max(tl.where(valid, key, -2147483648), axis=0))
        m_new = tl.maximum(m, tl.max(x, axis=0))
        m_ref = tl.where(m_new > float("-inf"), m_new, 0.0)  # only -inf so far (banned tokens): no inf - inf
        z = z * tl.exp((m - m_ref) * inv_temp) + tl.sum(tl.where(valid, tl.exp((x - m_ref) * inv_temp), 0.0), axis=0)
        m = m_new
    # Bisection over the keys: mass(key >= lo) >= top_p * z always holds; at hi it never does.
    lo = kmin.to(tl.int64)
    hi = kmax.to(tl.int64) + 1
    while hi - lo > 1:
        mid = lo + (hi - lo) // 2
        mass = tl.full([], 0.0, tl.float32)
        for start in range(0, V, BLOCK_V):
            offs = start + tl.arange(0, BLOCK_V)
            valid = offs < V
            x = tl.load(row_ptr + offs, mask=valid, other=float("-inf")).to(tl.float32)
            keep = valid & (ordered_key(x).to(tl.int64) >= mid)
            mass += tl.sum(tl.where(keep, tl.exp((x - m) * inv_temp), 0.0), axis=0)
        ok = mass >= top_p * z
        lo = tl.where(ok, mid, lo)
        hi = tl.where(ok, hi, mid)
    # Gumbel-max among the survivors {key >= lo}: SAMPLES draws at once.
    draws = tl.arange(0, SAMPLES)
    best = tl.full([SAMPLES], float("-inf"), tl.float32)
    best_i = tl.full([SAMPLES], 0, tl.int32)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        valid = offs < V
        x = tl.load(row_ptr + offs, mask=valid, other=float("-inf")).to(tl.float32)
        keep = valid & (ordered_key(x).to(tl.int64) >= lo)
        u = tl.rand(seed, (b * SAMPLES + draws[:, None]) * V + offs[None, :])
        u = tl.minimum(tl.maximum(u, 1e-7), 1.0 - 1e-7)
        score = tl.where(keep[None, :], ((x - m) * inv_temp)[None, :] - tl.log(-tl.log(u)), float("-inf"))
        blk_best = tl.max(score, axis=1)
        better = blk_best > best
        best_i = tl.where(better, start + tl.argmax(score, axis=1), best_i)
        best = tl.maximum(best, blk_best)
    tl.store(out_ptr + b * SAMPLES + draws, best_i.to(tl.int64))


__all__ = ["top_p_sample_kernel"]
