"""Fused decode attention in Numba CUDA: one pass over K and V with an online softmax, split-K.

Design (what :func:`numba_decode` launches)
-------------------------------------------
Decode reads the whole KV cache to produce one output row per query head, so the kernel's
job is to stream K and V from memory once, at full bandwidth, and keep every intermediate
(scores, probabilities, running statistics) on chip.

* **Split-K.** Batch 1 with 32 heads is only 32 (sequence, head) pairs: 32 blocks would
  leave most of an H100's 132 SMs idle. The grid is ``(B * Hkv * head_chunks, splits)``:
  each block walks one chunk of the sequence and writes a tiny partial result
  ``(m, l, acc)`` -- running max, running sum of ``exp(score - m)``, unnormalised
  ``Σ exp(score - m)·v`` -- and :data:`merge_kernel` combines the splits exactly
  (``out = Σ e^(m_s - M) acc_s / Σ e^(m_s - M) l_s``). With one split the first kernel
  writes the output itself and no merge is launched. :func:`plan` picks the splits from
  the SM count so the grid holds several blocks per SM.
* **Coalesced tiles.** A block processes ``TILE`` tokens at a time. Consecutive threads
  load consecutive elements of the ``[TILE, D]`` K and V tiles (a token's row is
  contiguous), all into registers first -- the loads have no branches (rows past the end
  re-read the last row and are masked later), so every one of them is in flight at once
  -- then K into shared memory, rows padded by one float so that threads reading different
  rows hit different banks. V waits in registers until K is used up, then takes its place.
* **Scores.** ``threads / TILE`` lanes split each dot product over D; the lane partials
  are summed through shared memory (the kernel must also run in Numba's simulator, which
  has no warp shuffles or votes).
* **Online softmax.** One thread per (head, token slot) finds the head's new max
  ``m' = max(m, max_t s_t)``, writes ``p_t = exp(s_t - m')`` and keeps its slot's running
  sum, rescaled by ``alpha = exp(m - m')``; the threads that own output elements rescale
  their accumulators by the same ``alpha`` and add ``Σ_t p_t v_t``. At the end the slots'
  sums add up to ``l``.
* **GQA.** One block serves up to ``max_group`` query heads that share a KV head, so K
  and V are read once for all of them.

Everything is fp32 on chip; K and V may be fp16 or fp32 and the output has q's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numba import cuda, float32

from labkit import runtime
from labkit.attention.validate import FP16_FP32, check_tensor, validate_decode
from labkit.numba_bridge import launch, sm_count

HEAD_DIMS = (64, 128)


@dataclass(frozen=True)
class KernelConfig:
    """Compile-time shape of the split kernel."""

    tile: int  # tokens per tile staged in shared memory
    threads: int  # threads per block; a multiple of tile
    max_group: int  # query heads one block serves from one read of K and V
    blocks_per_sm: int  # how many blocks per SM the split heuristic aims for
    min_tiles: int  # fewest tiles a split walks (fewer: partials and merge cost more than they save)
    max_registers: int | None = None  # per thread, a cap for the compiler (more resident blocks per SM)
    resident_per_sm: int = 4  # blocks of this shape one SM runs at once (the registers decide)


# 16-token tiles and a 128-register cap: ptxas fits the D = 128 kernel in 128 registers with no
# spills on sm_75 and sm_90, so 4 blocks (512 threads) are resident per SM on a T4 and an H100;
# uncapped it takes 170-180 and only 2 fit. Shared memory: 13 KB (D = 128) per block.
# Measured on an H100 (128 registers/thread, 4 resident blocks per SM = 528 slots): B = 8 with
# 1056 blocks (2 whole waves, GPT-2 shape) reached 80% of the copy roofline; B = 8 Llama with
# 1280 blocks (2.4 waves: the last one 42% full) 49%. So plan() rounds the grid to whole waves.
GPU_CONFIG = KernelConfig(tile=16, threads=128, max_group=4, blocks_per_sm=8, min_tiles=2, max_registers=128)
# The simulator runs one Python thread per CUDA thread: small blocks keep it quick.
SIM_CONFIG = KernelConfig(tile=8, threads=16, max_group=4, blocks_per_sm=2, min_tiles=1)


def make_split_kernel(D: int, cfg: KernelConfig):
    """Build the split-K kernel for head dim ``D`` (64 or 128) and config ``cfg``."""
    TILE, TPB, GMAX = cfg.tile, cfg.threads, cfg.max_group
    LANES = TPB // TILE  # threads per token in the dot products
    DL = D // LANES  # head-dim elements per lane
    COLS = min(TPB, D)  # loading a tile: consecutive threads take consecutive elements of a row,
    ROWS = TPB // COLS  # the block covers ROWS rows at a time,
    SEGS = D // COLS  # and SEGS passes along each row
    ITEMS = TILE // ROWS * SEGS  # tile elements each thread loads
    PAIRS = (GMAX * TILE + TPB - 1) // TPB  # (head, token) scores per thread, at most
    OWNS = (GMAX * D + TPB - 1) // TPB  # (head, dim) outputs per thread, at most
    PAD = D + 1  # padded shared row: threads reading different rows hit different banks
    assert TPB % TILE == 0 and D % LANES == 0 and D % COLS == 0 and TILE % ROWS == 0, (D, cfg)
    # The simulator's jit takes no register cap (and needs none).
    jit = cuda.jit(max_registers=cfg.max_registers) if cfg.max_registers and not runtime.is_sim() else cuda.jit

    @jit
    def split_kernel(q, k, v, scale, group, g, chunk, out, part_ml, part_acc):
        # q: [B, Hq, D] queries; k, v: [B, Hkv, T, D] the cache (fp16 or fp32)
        # scale: softmax scale; group: Hq // Hkv; g: query heads this block serves (divides group)
        # chunk: tokens per split; out: [B, Hq, D], written here when there is one split
        # part_ml: [B, Hq, S, 2] fp32 (m, l) per split; part_acc: [B, Hq, S, D] fp32 acc per split
        Hkv, T = k.shape[1], k.shape[2]
        tid = cuda.threadIdx.x
        per_kv = group // g
        b = cuda.blockIdx.x // (Hkv * per_kv)
        hk = (cuda.blockIdx.x // per_kv) % Hkv
        h0 = hk * group + (cuda.blockIdx.x % per_kv) * g  # first query head of this block
        split = cuda.blockIdx.y
        start = split * chunk
        end = min(start + chunk, T)
        kb = k[b, hk]  # [T, D]: the keys and values of this block's KV head
        vb = v[b, hk]
        row = tid // COLS  # where this thread loads in a tile: rows row, row + ROWS, ...
        col = tid % COLS  # and columns col, col + COLS, ...

        q_sh = cuda.shared.array((GMAX, D), float32)  # scaled queries, loaded once
        kv_sh = cuda.shared.array((TILE, PAD), float32)  # the K tile, then the V tile
        part_sh = cuda.shared.array((GMAX, LANES, TILE), float32)  # per-lane partial dot products
        s_sh = cuda.shared.array((GMAX, TILE), float32)  # scores of the tile (at the end: partial sums)
        p_sh = cuda.shared.array((GMAX, TILE), float32)  # probabilities of the tile
        alpha_sh = cuda.shared.array(GMAX, float32)  # this tile's rescaling factor per head
        m_sh = cuda.shared.array(GMAX, float32)  # the final running max per head
        kr = cuda.local.array(ITEMS, float32)  # this thread's slice of the K tile, in flight
        vr = cuda.local.array(ITEMS, float32)  # and of the V tile
        m_p = cuda.local.array(PAIRS, float32)  # running max and running sum of exp(s - m)
        l_p = cuda.local.array(PAIRS, float32)  # for each token slot this thread scores
        acc = cuda.local.array(OWNS, float32)  # running Σ exp(s - m)·v for each output element it owns

        for i in range(tid, g * D, TPB):
            q_sh[i // D, i % D] = float32(q[b, h0 + i // D, i % D]) * scale
        for j in range(PAIRS):
            m_p[j] = -math.inf
            l_p[j] = 0.0
        for j in range(OWNS):
            acc[j] = 0.0
        cuda.syncthreads()

        for t0 in range(start, end, TILE):
            # 1. Load the K and V tiles into registers, coalesced, then K into shared memory. Rows
            #    past `end` re-read the last valid row instead of branching (their scores are masked
            #    in step 3): with no branches, every load of the tile is in flight at once.
            for i in range(TILE // ROWS):
                tok = min(t0 + row + i * ROWS, end - 1)
                for s in range(SEGS):
                    kr[i * SEGS + s] = float32(kb[tok, col + s * COLS])
                    vr[i * SEGS + s] = float32(vb[tok, col + s * COLS])
            for i in range(TILE // ROWS):
                for s in range(SEGS):
                    kv_sh[row + i * ROWS, col + s * COLS] = kr[i * SEGS + s]
            cuda.syncthreads()

            # 2. Partial dot products: thread (lane, t) covers dims [lane*DL, (lane+1)*DL) of token t.
            lane = tid // TILE
            t = tid % TILE
            for gg in range(g):
                s = float32(0.0)
                for d in range(lane * DL, (lane + 1) * DL):
                    s += q_sh[gg, d] * kv_sh[t, d]
                part_sh[gg, lane, t] = s
            cuda.syncthreads()

            # 3. K is used up: V takes its place. Sum the lanes into scores; masked tokens get -inf.
            for i in range(TILE // ROWS):
                for s in range(SEGS):
                    kv_sh[row + i * ROWS, col + s * COLS] = vr[i * SEGS + s]
            for j in range(PAIRS):
                idx = tid + j * TPB
                if idx < g * TILE:
                    gg = idx // TILE
                    t = idx % TILE
                    s = float32(0.0)
                    for lane_ in range(LANES):
                        s += part_sh[gg, lane_, t]
                    s_sh[gg, t] = s if t0 + t < end else -math.inf
            cuda.syncthreads()

            # 4. Online softmax, one thread per (head, token slot): the head's new max m' (the same
            #    in every slot), p = exp(s - m'), and the slot's running sum rescaled by exp(m - m').
            for j in range(PAIRS):
                idx = tid + j * TPB
                if idx < g * TILE:
                    gg = idx // TILE
                    t = idx % TILE
                    m_new = m_p[j]
                    for u in range(TILE):
                        m_new = max(m_new, s_sh[gg, u])
                    alpha = math.exp(m_p[j] - m_new)
                    p = math.exp(s_sh[gg, t] - m_new)
                    p_sh[gg, t] = p
                    l_p[j] = l_p[j] * alpha + p
                    m_p[j] = m_new
                    if t == 0:
                        alpha_sh[gg] = alpha
            cuda.syncthreads()

            # 5. Each owned output element: rescale by exp(m - m') and add this tile's p·V.
            for j in range(OWNS):
                idx = tid + j * TPB
                if idx < g * D:
                    gg = idx // D
                    d = idx % D
                    a = float32(0.0)
                    for u in range(TILE):
                        a += p_sh[gg, u] * kv_sh[u, d]
                    acc[j] = acc[j] * alpha_sh[gg] + a
            cuda.syncthreads()  # the next tile overwrites kv_sh, s_sh, p_sh and alpha_sh

        # The sum l of each head is spread over its token slots: gather it through shared memory.
        for j in range(PAIRS):
            idx = tid + j * TPB
            if idx < g * TILE:
                s_sh[idx // TILE, idx % TILE] = l_p[j]
                if idx % TILE == 0:
                    m_sh[idx // TILE] = m_p[j]
        cuda.syncthreads()

        # One split: this block has the whole answer. Several: leave (m, l, acc) for the merge.
        for j in range(OWNS):
            idx = tid + j * TPB
            if idx < g * D:
                gg = idx // D
                d = idx % D
                l_sum = float32(0.0)
                for u in range(TILE):
                    l_sum += s_sh[gg, u]
                if cuda.gridDim.y == 1:
                    out[b, h0 + gg, d] = acc[j] / l_sum
                else:
                    part_acc[b, h0 + gg, split, d] = acc[j]
                    if d == 0:
                        part_ml[b, h0 + gg, split, 0] = m_sh[gg]
                        part_ml[b, h0 + gg, split, 1] = l_sum

    return split_kernel


@cuda.jit
def merge_kernel(part_ml, part_acc, out):
    # part_ml: [B, Hq, S, 2] (m, l) per split; part_acc: [B, Hq, S, D]; out: [B, Hq, D]
    # Grid (B * Hq,), block (D,): thread d combines element d of every split.
    Hq, S = part_ml.shape[1], part_ml.shape[2]
    b = cuda.blockIdx.x // Hq
    h = cuda.blockIdx.x % Hq
    d = cuda.threadIdx.x
    m_all = float32(-math.inf)
    for s in range(S):
        m_all = max(m_all, part_ml[b, h, s, 0])
    num = float32(0.0)
    den = float32(0.0)
    for s in range(S):
        w = math.exp(part_ml[b, h, s, 0] - m_all)  # rescale split s to the global max
        num += w * part_acc[b, h, s, d]
        den += w * part_ml[b, h, s, 1]
    out[b, h, d] = num / den


# The GPU kernels, built at import (Numba compiles them on first launch); the T4 PTX tests use these.
split_kernel_d64 = make_split_kernel(64, GPU_CONFIG)
split_kernel_d128 = make_split_kernel(128, GPU_CONFIG)
_KERNELS = {(64, GPU_CONFIG): split_kernel_d64, (128, GPU_CONFIG): split_kernel_d128}


def _kernel(D: int, cfg: KernelConfig):
    if (D, cfg) not in _KERNELS:
        _KERNELS[(D, cfg)] = make_split_kernel(D, cfg)
    return _KERNELS[(D, cfg)]


def default_config() -> KernelConfig:
    return SIM_CONFIG if runtime.is_sim() else GPU_CONFIG


@dataclass(frozen=True)
class Plan:
    """How :func:`numba_decode` launches one shape."""

    heads_per_block: int  # query heads sharing one read of K/V in a block
    splits: int  # blocks along the sequence
    chunk: int  # tokens per split (a multiple of the tile)
    grid: tuple[int, int]
    threads: int


def plan(B: int, Hq: int, Hkv: int, T: int, *, splits: int | None = None, cfg: KernelConfig | None = None,
         sms: int | None = None) -> Plan:
    """The launch for one shape: heads per block, then splits from the SM count (or ``splits``).

    Splits are chosen so the grid holds about ``cfg.blocks_per_sm`` blocks per SM, with
    every split walking at least ``cfg.min_tiles`` tiles; the chunk is rounded up to whole
    tiles and the split count recomputed, so no split is empty.
    """
    cfg = cfg or default_config()
    group = Hq // Hkv
    g = max(d for d in range(1, min(group, cfg.max_group) + 1) if group % d == 0)
    blocks = B * Hkv * (group // g)
    if splits is None:
        splits = _wave_splits(blocks, T, cfg, sms or sm_count())
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    chunk = _chunk(T, splits, cfg.tile)
    splits = math.ceil(T / chunk)
    return Plan(g, splits, chunk, (blocks, splits), cfg.threads)


def _chunk(T: int, splits: int, tile: int) -> int:
    return math.ceil(math.ceil(T / splits) / tile) * tile


def _wave_splits(blocks: int, T: int, cfg: KernelConfig, sms: int) -> int:
    """Splits near ``cfg.blocks_per_sm`` blocks per SM whose grid best fills whole waves.

    A wave is ``sms * cfg.resident_per_sm`` blocks; a grid of 2.4 waves runs its last wave
    mostly empty. Among half to twice the wanted split count (each split at least
    ``cfg.min_tiles`` tiles), take the one with the fullest waves, then the nearest to the
    wanted count, then the fewest.
    """
    want = math.ceil(cfg.blocks_per_sm * sms / blocks)
    cap = max(1, T // (cfg.min_tiles * cfg.tile))
    if want >= cap:
        return cap
    slots = sms * cfg.resident_per_sm

    def score(s):
        n = blocks * math.ceil(T / _chunk(T, s, cfg.tile))  # the grid after rounding chunks to tiles
        return (-n / (math.ceil(n / slots) * slots), abs(s - want), s)

    return min(range(max(1, (want + 1) // 2), min(2 * want, cap) + 1), key=score)


def numba_decode(q, k, v, *, scale: float | None = None, splits: int | None = None,
                 config: KernelConfig | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Fused split-K decode attention (see the module docstring).

    q: [B, Hq, D]; k, v: [B, Hkv, T, D]; fp16 or fp32, D 64 or 128, Hq a multiple of Hkv,
    contiguous, on labkit's device. Returns [B, Hq, D] in q's dtype, written into ``out``
    when given (same shape, dtype and device as q). ``splits`` overrides the split count;
    ``config`` the kernel's compile-time shape.
    """
    B, Hq, Hkv, T, D = validate_decode(q, k, v, dtypes=FP16_FP32, head_dims=HEAD_DIMS, device=runtime.device())
    cfg = config or default_config()
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    p = plan(B, Hq, Hkv, T, splits=splits, cfg=cfg)
    if out is None:
        out = torch.empty_like(q)
    else:
        check_tensor("out", out, ndim=3, dtypes=(q.dtype,), device=runtime.device())
        if out.shape != q.shape:
            raise ValueError(f"out must have q's shape {tuple(q.shape)}, got {tuple(out.shape)}")
    part_ml = torch.empty((B, Hq, p.splits, 2), dtype=torch.float32, device=q.device)
    part_acc = torch.empty((B, Hq, p.splits, D), dtype=torch.float32, device=q.device)
    launch(_kernel(D, cfg), p.grid, p.threads, q, k, v, np.float32(scale), Hq // Hkv, p.heads_per_block, p.chunk,
           out, part_ml, part_acc)
    if p.splits > 1:
        launch(merge_kernel, B * Hq, D, part_ml, part_acc, out)
    return out


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


__all__ = ["GPU_CONFIG", "HEAD_DIMS", "KernelConfig", "Plan", "SIM_CONFIG", "launch_one_pass", "make_split_kernel",
           "merge_kernel", "numba_decode", "plan"]
