"""Top-k / top-p sampling in one Triton kernel, without sorting the vocabulary.

``torch``'s usual top-p sampler sorts every row (``V log V`` work and several full-size
temporaries: sorted logits, their softmax, a cumulative sum, a scatter back), then samples.
This kernel never sorts. One program handles one row of logits ``[V]`` in a small number of
passes over it:

1. **statistics**: the row's max ``m`` and the softmax normaliser ``Z = Σ exp((x - m) / T)``,
   each lane keeping its own online (max, sum) pair, combined once at the end;
2. **top-k** (if asked): every surviving token is at least as likely as the least likely
   survivor, so the kept set is ``{x ≥ t}`` for one threshold ``t``: the largest ``t`` with
   ``count(x ≥ t) ≥ k``. It is found by an NPIV-ary search over the float's bits read as an
   ordered integer (:func:`ordered_key`): each pass tests NPIV thresholds at once and keeps the
   bracket ``[lo, hi)`` where the answer lies, so about 32 / log2(NPIV) passes land exactly on
   a logit, fewer when the bracket holds a single token early;
3. **candidates**: one pass writes out the weights ``p = exp((x - m) / T)`` of the tokens that
   can still be kept, with their ids. With top-p that excludes every ``p < (1 - top_p) / V``:
   all such tokens together hold less than ``1 - top_p`` of the mass, so none can be in the
   top-p set. At a peaked distribution that leaves a few hundred of a 128k vocabulary;
4. **top-p** (if asked): the same search over the candidates' weights for the largest ``t``
   with ``mass(p ≥ t) ≥ top_p · Z_kept`` (``Z_kept``: the mass of the top-k set). Only the
   first pass reads every candidate; each later pass reads the candidates left inside the
   bracket and keeps (compacts) those inside the new one, about NPIV times fewer a pass, so
   the search costs little more than two reads of the candidates however many passes it takes;
5. **the draw**: the exponential race among the kept candidates: token ``i`` wins
   ``argmax p_i / E_i`` with ``E_i ~ Exp(1)`` with probability ``p_i / Σ_kept p_j``, exactly
   the renormalised top-k/top-p distribution, with no cumulative sum.

Sums across a pass live in per-lane registers (``[BLOCK, NPIV]`` for a search pass) and are
reduced once after the loop; the search tiles are loaded already in that layout, and the next
tile is loaded before the current one is compared (:func:`_pivot_pass` says why each matters:
this kernel runs one program per row, with few warps to hide memory latency). Ties at the
threshold are all kept (a sort-based sampler keeps an arbitrary subset of them). Masks are plain
comparisons (``offs < V``), so the kernel runs in Triton's interpreter too.
:func:`labkit.decoding.sampling_launch.sample_top_k_top_p` launches it:

    tokens = sample_top_k_top_p(logits, temperature=0.8, top_p=0.9, seed=1)   # [B] int64
"""

from __future__ import annotations

import triton
import triton.language as tl

from labkit.decoding.sampling_keys import ordered_key


@triton.jit
def _pivot_keys(src_ptr, offs, n, FROM_LOGITS: tl.constexpr):
    """The keys (and, for candidates, the weights) of ``src[offs]``, masked past ``n``."""
    valid = offs < n
    if FROM_LOGITS:
        x = tl.load(src_ptr + offs, mask=valid, other=float("-inf")).to(tl.float32)
        bits = x.to(tl.int32, bitcast=True)  # ordered_key, inlined (see top_k_top_p_sample_kernel)
        return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits), x, valid
    p = tl.load(src_ptr + offs, mask=valid, other=0.0)
    return p.to(tl.int32, bitcast=True), p, valid


@triton.jit
def _pivot_pass(src_ptr, n, t, FROM_LOGITS: tl.constexpr, BLOCK: tl.constexpr, NPIV: tl.constexpr):
    """One read of ``src[:n]``: for each of the NPIV pivots ``t`` (int32), how many elements have
    a key ``>= t`` and (candidates only) their total weight.

    ``FROM_LOGITS``: ``src`` holds logits, keyed by :func:`ordered_key`; otherwise it holds the
    candidates' weights ``p >= 0``, whose float bits already order like the values. Three
    choices keep this loop, which runs over the whole candidate set once per pass, at memory speed:

    * the sums live in ``[BLOCK, NPIV]`` registers and are reduced once, after the loop (a
      block-wide reduction per tile costs a barrier per tile);
    * the tile is loaded as a ``[BLOCK, 1]`` column, already in the layout of the
      ``[BLOCK, NPIV]`` comparison: a 1-D load broadcast with ``[:, None]`` is re-laid out
      through shared memory, four barriers per tile;
    * the next tile is loaded before this one is compared (a hand-written two-stage pipeline):
      one program per row has few warps to hide a memory round trip behind.
    """
    cnt = tl.zeros([BLOCK, NPIV], tl.int32)
    mass = tl.zeros([BLOCK, NPIV], tl.float32)
    col = tl.arange(0, BLOCK)[:, None]
    key_next, w_next, valid_next = _pivot_keys(src_ptr, col, n, FROM_LOGITS)
    for start in range(0, n, BLOCK):
        key, w, valid = key_next, w_next, valid_next
        key_next, w_next, valid_next = _pivot_keys(src_ptr, start + BLOCK + col, n, FROM_LOGITS)
        ge = (key >= t[None, :]) & valid
        cnt += ge.to(tl.int32)
        if not FROM_LOGITS:
            mass += tl.where(ge, w, 0.0)
    return tl.sum(cnt, axis=0), tl.sum(mass, axis=0)


@triton.jit
def _compact_pass(src_ptr, n, lo, hi, dst_ptr, t, BLOCK: tl.constexpr, NPIV: tl.constexpr):
    """One read of the weights ``src[:n]``: those whose key lies in ``[lo, hi)`` are written, in
    order, to ``dst[:n_in]``, and for each pivot ``t`` are counted (key ``>= t``) and summed.

    Returns ``(n_in, counts, masses)``. ``dst`` may be ``src``: an element is written at or
    before the place it was read from, after the whole tile has been read (the prefix sum that
    places it waits for every warp's tile), so nothing is overwritten before it is read.
    """
    cnt = tl.zeros([BLOCK, NPIV], tl.int32)
    mass = tl.zeros([BLOCK, NPIV], tl.float32)
    col = tl.arange(0, BLOCK)[:, None]
    n_in = tl.zeros([], tl.int32)
    key_next, w_next, valid_next = _pivot_keys(src_ptr, col, n, False)
    for start in range(0, n, BLOCK):
        key, w, valid = key_next, w_next, valid_next
        key_next, w_next, valid_next = _pivot_keys(src_ptr, start + BLOCK + col, n, False)
        inside = valid & (key >= lo) & (key < hi)
        pos = n_in + tl.cumsum(inside.to(tl.int32), axis=0) - 1
        tl.store(dst_ptr + pos, w, mask=inside)
        n_in += tl.sum(tl.sum(inside.to(tl.int32), axis=1), axis=0)
        ge = (key >= t[None, :]) & inside
        cnt += ge.to(tl.int32)
        mass += tl.where(ge, w, 0.0)
    return n_in, tl.sum(cnt, axis=0), tl.sum(mass, axis=0)


@triton.jit
def _narrow(lo, hi, c_lo, c_hi, m_hi, t, ok, cnt, mass):
    """The bracket after one pass: lo moves to the largest pivot where the predicate holds, hi to
    the smallest where it fails; c_lo, c_hi are the element counts at lo and hi (key >= lo,
    key >= hi), m_hi the mass at hi."""
    new_lo = tl.max(tl.where(ok, t, lo), axis=0)
    new_hi = tl.min(tl.where(ok, hi, t), axis=0)
    c_lo = tl.max(tl.where(t == new_lo, cnt, 0), axis=0)  # lo is always a pivot (t[0] = lo)
    moved = new_hi != hi
    c_hi = tl.where(moved, tl.max(tl.where(t == new_hi, cnt, 0), axis=0), c_hi)
    m_hi = tl.where(moved, tl.max(tl.where(t == new_hi, mass, 0.0), axis=0), m_hi)
    return new_lo, new_hi, c_lo, c_hi, m_hi


@triton.jit
def top_k_top_p_sample_kernel(
    logits_ptr,  # [B, V] logits (any float dtype), row stride stride_b, last dim contiguous
    out_ptr,  # [B, SAMPLES] int64: the drawn tokens of each row
    V, stride_b,  # vocabulary size; row stride of logits
    inv_temp,  # 1 / temperature (> 0)
    top_k,  # keep the top_k most likely tokens (used when USE_TOP_K)
    top_p,  # keep the most likely tokens whose mass reaches top_p (used when USE_TOP_P)
    seed,  # random seed: draw s of row b uses the stream (seed, (b * SAMPLES + s) * V + token)
    cand_p_ptr, cand_i_ptr,  # [B, V] float32 / int32 scratch: the candidates' weights and token ids
    work_ptr,  # [B, V] float32 scratch: the top-p search's shrinking set of weights
    USE_TOP_K: tl.constexpr,
    USE_TOP_P: tl.constexpr,
    BLOCK_V: tl.constexpr,  # tokens per tile when reading the row (a power of two)
    BLOCK_S: tl.constexpr,  # tokens per tile in the search passes ([BLOCK_S, NPIV] comparisons)
    NPIV: tl.constexpr,  # thresholds tested per search pass: log2(NPIV) bits of the threshold a pass
    SAMPLES: tl.constexpr,  # independent draws per row (a power of two; 1 when decoding)
):
    b = tl.program_id(0)
    row_ptr = logits_ptr + b.to(tl.int64) * stride_b
    lanes = tl.arange(0, BLOCK_V)

    # Pass 1: the row's max m and normaliser Z = Σ exp((x - m) / T). Each lane keeps its own
    # online (max, sum) pair; they are combined once at the end.
    m_lane = tl.full([BLOCK_V], float("-inf"), tl.float32)
    z_lane = tl.zeros([BLOCK_V], tl.float32)
    for start in range(0, V, BLOCK_V):
        offs = start + lanes
        x = tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m_lane, x)
        m_ref = tl.where(m_new > float("-inf"), m_new, 0.0)  # a lane that has seen only -inf: no inf - inf
        z_lane = z_lane * tl.exp((m_lane - m_ref) * inv_temp) + tl.exp((x - m_ref) * inv_temp)
        m_lane = m_new
    m = tl.max(m_lane, axis=0)
    z = tl.sum(z_lane * tl.exp((m_lane - m) * inv_temp), axis=0)

    # Pass 2 (top-k only): the k-th largest logit t_k, by NPIV-ary search over ordered keys, counting.
    # The bracket [lo, hi): count(key >= lo) >= k holds, count(key >= hi) >= k fails.
    key_k = tl.full([], -2147483648, tl.int64)
    if USE_TOP_K:
        lo = key_k
        hi = ordered_key(m).to(tl.int64) + 1
        c_lo = tl.zeros([], tl.int32) + V
        c_hi = tl.zeros([], tl.int32)
        while (hi - lo > 1) & (c_lo - c_hi > 1):  # one element left in [lo, hi): lo is exact
            t = lo + ((hi - lo) * tl.arange(0, NPIV)) // NPIV  # t[0] = lo
            cnt, _ = _pivot_pass(row_ptr, V, t.to(tl.int32), True, BLOCK_S, NPIV)
            lo, hi, c_lo, c_hi, _ = _narrow(lo, hi, c_lo, c_hi, 0.0, t, (cnt >= top_k) | (t == lo), cnt, cnt)
        key_k = lo

    # Pass 3: keep the candidates, as weights p = exp((x - m) / T) in (0, 1] with their token ids.
    # With top-p, a token with p < (1 - top_p) / V can never be kept: all such tokens together hold
    # less than (1 - top_p) of any set containing the max (whose p is 1). At a peaked distribution
    # that leaves a few hundred of 128k tokens for the search. Z_kept: the mass of the top-k set.
    p_min = tl.zeros([], tl.float32)
    if USE_TOP_P:
        p_min += (1.0 - top_p) / V
    cp_ptr = cand_p_ptr + b.to(tl.int64) * V
    ci_ptr = cand_i_ptr + b.to(tl.int64) * V
    n_cand = tl.full([], 0, tl.int32)
    zk_lane = tl.zeros([BLOCK_V], tl.float32)
    for start in range(0, V, BLOCK_V):
        offs = start + lanes
        valid = offs < V
        x = tl.load(row_ptr + offs, mask=valid, other=float("-inf")).to(tl.float32)
        bits = x.to(tl.int32, bitcast=True)  # ordered_key, inlined: the interpreter mishandles nested jit calls
        in_k = valid & (tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64) >= key_k)
        p = tl.exp((x - m) * inv_temp)
        zk_lane += tl.where(in_k, p, 0.0)
        keep = in_k & (p >= p_min)
        pos = n_cand + tl.cumsum(keep.to(tl.int32), axis=0) - 1
        tl.store(cp_ptr + pos, p, mask=keep)
        tl.store(ci_ptr + pos, offs, mask=keep)
        n_cand += tl.sum(keep.to(tl.int32), axis=0)
    tl.debug_barrier()  # the candidates written by every thread, before any thread reads them
    z_kept = z
    if USE_TOP_K:
        z_kept = tl.sum(zk_lane, axis=0)

    # Pass 4… (top-p): the largest weight t with mass(p >= t) >= top_p * Z_kept, NPIV-ary search over
    # the weights' bits. Counts and masses are of all candidates at or above a pivot: those at or
    # above hi (c_hi, m_hi) plus those still in [lo, hi). The first pass reads every candidate; each
    # later one reads only the candidates left in the bracket, and keeps (compacts) those left in the
    # new one: about NPIV times fewer a pass.
    p_lo = p_min.to(tl.int32, bitcast=True).to(tl.int64)
    if USE_TOP_P:
        lo = p_lo
        hi = tl.full([], 0x3F800001, tl.int64)  # the bits of 1.0, plus one: no p is above 1
        c_lo = n_cand
        c_hi = tl.zeros([], tl.int32)
        m_hi = tl.zeros([], tl.float32)
        target = top_p * z_kept
        t = lo + ((hi - lo) * tl.arange(0, NPIV)) // NPIV
        cnt, mass = _pivot_pass(cp_ptr, n_cand, t.to(tl.int32), False, BLOCK_S, NPIV)
        lo, hi, c_lo, c_hi, m_hi = _narrow(lo, hi, c_lo, c_hi, m_hi, t, (mass >= target) | (t == lo), cnt, mass)
        wk_ptr = work_ptr + b.to(tl.int64) * V
        src_ptr = cp_ptr
        n_src = n_cand
        while (hi - lo > 1) & (c_lo - c_hi > 1):
            t = lo + ((hi - lo) * tl.arange(0, NPIV)) // NPIV
            n_src, cnt, mass = _compact_pass(src_ptr, n_src, lo.to(tl.int32), hi.to(tl.int32), wk_ptr,
                                             t.to(tl.int32), BLOCK_S, NPIV)
            src_ptr = wk_ptr
            cnt += c_hi
            mass += m_hi
            lo, hi, c_lo, c_hi, m_hi = _narrow(lo, hi, c_lo, c_hi, m_hi, t, (mass >= target) | (t == lo), cnt,
                                               mass)
        p_lo = lo

    # Last pass: the exponential race among the kept candidates {p >= p_lo}: token i wins
    # argmax_i p_i / E_i (E_i ~ Exp(1)) with probability p_i / Σ p. Each lane keeps its own best
    # of every draw; one reduction at the end.
    draws = tl.arange(0, SAMPLES)
    cand = tl.arange(0, BLOCK_S)
    best = tl.full([SAMPLES, BLOCK_S], -1.0, tl.float32)
    best_i = tl.full([SAMPLES, BLOCK_S], 0, tl.int32)
    for start in range(0, n_cand, BLOCK_S):
        offs = start + cand
        valid = offs < n_cand
        p = tl.load(cp_ptr + offs, mask=valid, other=0.0)
        ids = tl.load(ci_ptr + offs, mask=valid, other=0)
        keep = valid & (p.to(tl.int32, bitcast=True).to(tl.int64) >= p_lo)
        u = tl.rand(seed, (b * SAMPLES + draws[:, None]) * V + ids[None, :])  # [SAMPLES, BLOCK_S]
        e = -tl.log(tl.minimum(tl.maximum(u, 1e-7), 1.0 - 1e-7))
        score = tl.where(keep[None, :], p[None, :] / e, -1.0)
        better = score > best
        best_i = tl.where(better, ids[None, :], best_i)
        best = tl.where(better, score, best)
    win = tl.argmax(best, axis=1)
    token = tl.sum(tl.where(cand[None, :] == win[:, None], best_i, 0), axis=1)
    tl.store(out_ptr + b * SAMPLES + draws, token.to(tl.int64))


# From a sweep on an H100 (NPIV 4/8/16, tiles of 512/1024, 8/16 warps; flat and peaked logits at
# 32k and 128k tokens, batch 1 and 64): with the compacting search the passes after the first are
# short, so 4 pivots a pass (the fewest compares) with 1024-candidate tiles gave the best geometric
# mean; 8 pivots were within 1%, 16 about 10% slower.


__all__ = ["top_k_top_p_sample_kernel"]
