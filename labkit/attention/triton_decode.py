"""Decode attention in Triton: a one-pass kernel and flash-decoding (split-K + log-sum-exp merge).

One query token per sequence attends to its KV cache. The work is all memory traffic (each K
and V element is read once and used for two multiply-adds), so a kernel is fast when it keeps
every SM streaming K and V at once:

* :func:`triton_decode` runs one program per (sequence, KV head). The program loads the
  query heads of its GQA group as one ``[GROUP, D]`` tile (up to :data:`MAX_HEADS`; a larger
  group takes several programs), then streams K and V in ``[BLOCK_T, D]`` tiles with an
  online softmax in fp32: one read of K and V serves every query head of the group. Scores
  are a broadcast-multiply and ``tl.sum`` (no ``tl.dot``, so the T4 path stays on plain
  loads and reductions). ``tl.range(..., num_stages=...)`` can prefetch the next tiles into
  shared memory on sm_80+ (cp.async); the T4 and, as measured fastest, the H100 use plain loads.
* :func:`flash_decode` splits each sequence's KV range across ``num_splits`` programs (so
  ``batch × kv_heads × num_splits`` programs fill the GPU even at batch 1). Each writes a
  partial result ``(m, l, acc)``: running max, sum of exponentials and unnormalised output
  into a cached fp32 workspace; a second kernel merges the partials by log-sum-exp:

      M = max_i m_i,   out = Σ_i 2^(m_i − M)·acc_i / Σ_i 2^(m_i − M)·l_i

  Scores are kept in the log2 domain (q is pre-scaled by scale·log2 e) so the kernels use
  ``exp2``.

Both take ``lengths`` (``[B]`` int32, the valid KV length per sequence, for ragged batches in
a preallocated cache) and ``rope=(cos, sin, positions)``, which rotates the query as it is
loaded (rotate-half convention, :mod:`labkit.rope`): attention on an unrotated ``q`` equals
attention on ``apply_rope(q, positions, cos, sin)``.

Neither synchronises with the host nor allocates on the hot path when ``out=`` is given (the
workspace is cached per device and shape), so a call can be captured in a CUDA graph once it
has run once outside the capture.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from labkit import runtime
from labkit.attention.splits import MAX_SPLITS, flash_attn_num_splits, num_splits_heuristic, sm_count
from labkit.attention.validate import check_tensor, validate_decode

HEAD_DIMS = (16, 32, 64, 128, 256)  # powers of two: BLOCK_D = D, so every row is one contiguous load
MAX_HEADS = 4  # query heads per program: more would spill registers (a larger group takes several programs)
LOG2E = 1.4426950408889634


@triton.jit
def _attend_kernel(
    Q, K, V,  # q [B, Hq, D]; k, v [B, Hkv, T, D]; contiguous, fp16/bf16/fp32
    Lengths,  # [B] int32 valid KV length per sequence (read only if HAS_LENGTHS)
    Cos, Sin,  # RoPE tables [max_len, D/2] fp32 (read only if HAS_ROPE)
    Positions,  # [B] int32 the query's position per sequence (read only if HAS_ROPE)
    Out,  # [B, Hq, D] the output (written only if not SPLIT)
    Mws, Lws,  # [B, Hq, num_splits] fp32 partial running max and sum (written only if SPLIT)
    Accws,  # [B, Hq, num_splits, D] fp32 partial unnormalised output (written only if SPLIT)
    qk_scale,  # softmax scale × log2(e): scores live in the log2 domain
    T,  # KV tokens allocated per sequence (k.shape[2])
    num_splits,  # programs per (sequence, KV head) along T
    HKV: tl.constexpr,  # KV heads
    GROUP: tl.constexpr,  # query heads per KV head (Hq // Hkv)
    HEADS: tl.constexpr,  # query heads per program: a power of two, the q tile's rows
    HEAD_CHUNKS: tl.constexpr,  # programs sharing one KV head, ceil(GROUP / HEADS)
    HEAD_DIM: tl.constexpr,  # D, a power of two
    BLOCK_T: tl.constexpr,  # KV tokens per tile
    NUM_STAGES: tl.constexpr,  # K/V tiles in flight per program (sm_80+ prefetches them asynchronously)
    HAS_LENGTHS: tl.constexpr,
    HAS_ROPE: tl.constexpr,
    SPLIT: tl.constexpr,  # write partials to the workspace (flash-decoding) or the final output
):
    pid = tl.program_id(0)  # which (sequence, KV head, chunk of its query heads)
    split = tl.program_id(1)  # which chunk of the sequence's KV range
    pid_bh = pid // HEAD_CHUNKS  # (sequence, KV head)
    b = pid_bh // HKV
    hk = pid_bh % HKV
    head0 = hk * GROUP + (pid % HEAD_CHUNKS) * HEADS  # first query head of this program

    # 1. This program's KV range: the sequence's valid length cut into num_splits chunks of
    #    whole tiles, so every tile the loop visits holds at least one valid token.
    if HAS_LENGTHS:
        length = tl.minimum(tl.maximum(tl.load(Lengths + b), 1), T)
    else:
        length = T
    tiles_per_split = tl.cdiv(tl.cdiv(length, BLOCK_T), num_splits)
    t_begin = split * tiles_per_split * BLOCK_T
    t_end = tl.minimum(t_begin + tiles_per_split * BLOCK_T, length)

    # 2. The program's query heads as one [HEADS, 1, HEAD_DIM] tile in fp32, rotated if asked,
    #    pre-scaled so that q·k is already the log2-domain score. Every tile below is 3-D,
    #    [heads, tokens, dims], and reductions keep their dimension: all of them then share one
    #    register layout and nothing is shuffled through shared memory inside the loop.
    offs_g = tl.arange(0, HEADS)[:, None, None]  # query heads of the program
    offs_t = tl.arange(0, BLOCK_T)[None, :, None]  # tokens of a tile
    offs_d = tl.arange(0, HEAD_DIM)[None, None, :]  # head dims, contiguous: 16-byte loads
    mask_g = head0 + offs_g < (hk + 1) * GROUP  # the last chunk of a group may be partial
    q_rows = (b * (HKV * GROUP) + head0 + offs_g).to(tl.int64) * HEAD_DIM
    q = tl.load(Q + q_rows + offs_d, mask=mask_g, other=0.0).to(tl.float32)
    if HAS_ROPE:
        # rotate-half: x'[i] = x[i]·cos − x[i + D/2]·sin, x'[i + D/2] = x[i + D/2]·cos + x[i]·sin
        HALF: tl.constexpr = HEAD_DIM // 2
        partner = tl.where(offs_d < HALF, offs_d + HALF, offs_d - HALF)
        sign = tl.where(offs_d < HALF, -1.0, 1.0)
        pos = tl.load(Positions + b).to(tl.int64)
        cos = tl.load(Cos + pos * HALF + offs_d % HALF)
        sin = tl.load(Sin + pos * HALF + offs_d % HALF)
        q_partner = tl.load(Q + q_rows + partner, mask=mask_g, other=0.0).to(tl.float32)
        q = q * cos + sign * q_partner * sin
    q = q * qk_scale

    # 3. Stream K and V tile by tile with an online softmax per query head.
    k_ptrs = K + pid_bh.to(tl.int64) * T * HEAD_DIM  # this (sequence, KV head)'s [T, D] slab
    v_ptrs = V + pid_bh.to(tl.int64) * T * HEAD_DIM
    m = tl.full([HEADS, 1, 1], float("-inf"), dtype=tl.float32)  # running max of scores
    l = tl.zeros([HEADS, 1, 1], dtype=tl.float32)  # running sum of 2^(score − m)
    acc = tl.zeros([HEADS, 1, HEAD_DIM], dtype=tl.float32)  # running Σ 2^(score − m)·v
    for start in tl.range(t_begin, t_end, BLOCK_T, num_stages=NUM_STAGES):
        t = start + offs_t
        mask_t = t < t_end
        k = tl.load(k_ptrs + t * HEAD_DIM + offs_d, mask=mask_t, other=0.0).to(tl.float32)  # [1, BLOCK_T, D]
        v = tl.load(v_ptrs + t * HEAD_DIM + offs_d, mask=mask_t, other=0.0).to(tl.float32)
        s = tl.sum(q * k, axis=2, keep_dims=True)  # scores [HEADS, BLOCK_T, 1]
        s = tl.where(mask_t, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1, keep_dims=True))
        alpha = tl.exp2(m - m_new)  # rescales what was accumulated under the old max
        p = tl.exp2(s - m_new)
        l = l * alpha + tl.sum(p, axis=1, keep_dims=True)
        acc = acc * alpha + tl.sum(p * v, axis=1, keep_dims=True)
        m = m_new

    # 4. Write the normalised output, or this chunk's partial for the merge.
    if SPLIT:
        part = (b * (HKV * GROUP) + head0 + offs_g).to(tl.int64) * num_splits + split  # [HEADS, 1, 1]
        tl.store(Mws + part, m, mask=mask_g)
        tl.store(Lws + part, l, mask=mask_g)
        tl.store(Accws + part * HEAD_DIM + offs_d, acc, mask=mask_g)
    else:
        out = acc / l
        tl.store(Out + q_rows + offs_d, out.to(Out.dtype.element_ty), mask=mask_g)


@triton.jit
def _merge_kernel(
    Mws, Lws,  # [B·Hq, num_splits] fp32 partial max (log2 domain) and sum of exponentials
    Accws,  # [B·Hq, num_splits, D] fp32 partial unnormalised outputs
    Out,  # [B·Hq, D] the output, q's dtype
    num_splits,  # partials per row
    HEAD_DIM: tl.constexpr,  # D, a power of two
    SPLITS_P: tl.constexpr,  # num_splits rounded up to a power of two
):
    row = tl.program_id(0).to(tl.int64)  # one (sequence, query head) per program
    offs_s = tl.arange(0, SPLITS_P)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_s = offs_s < num_splits
    # A chunk with no valid tokens left m = -inf, l = 0, acc = 0: its weight below is 0.
    m = tl.load(Mws + row * num_splits + offs_s, mask=mask_s, other=float("-inf"))
    l = tl.load(Lws + row * num_splits + offs_s, mask=mask_s, other=0.0)
    acc = tl.load(Accws + (row * num_splits + offs_s[:, None]) * HEAD_DIM + offs_d[None, :],
                  mask=mask_s[:, None], other=0.0)
    m_all = tl.max(m, axis=0)  # chunk 0 always holds a token, so this is finite
    w = tl.exp2(m - m_all)  # each chunk's weight relative to the global max
    out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
    tl.store(Out + row * HEAD_DIM + offs_d, out.to(Out.dtype.element_ty), mask=offs_d < HEAD_DIM)


# ----------------------------------------------------------------------------------------------
# Launch configuration


@dataclass(frozen=True)
class Config:
    """How the split kernel is launched (``labkit`` picks it per GPU; tuning overrides it)."""

    block_t: int  # KV tokens per tile
    num_warps: int
    num_stages: int  # K/V tiles in flight per program (1: plain loads; more: cp.async prefetch, sm_80+)
    max_heads: int = MAX_HEADS  # query heads one program serves from its read of K and V


@functools.lru_cache(maxsize=None)
def capability(device_index: int | None = None) -> tuple[int, int]:
    """The GPU's compute capability; (7, 5), the T4's, in sim mode (the course's target)."""
    if runtime.is_sim() or not torch.cuda.is_available():
        return (7, 5)
    return torch.cuda.get_device_capability(device_index or 0)


def kernel_config(head_dim: int, group: int, cc: tuple[int, int] | None = None) -> Config:
    """The launch configuration for a head dim, a GQA group size and a compute capability.

    A program holds its q and accumulator rows (``heads × D`` each) and ``[BLOCK_T, D]`` tiles
    of K and V in registers. On a T4 (sm_75, no asynchronous copies) 64 tokens of D = 128
    (16 KB of fp16 per K tile) keep about 100 registers a thread for one head, about 200 for
    four, with no spills, and put 32 KB of loads in flight per program. On an H100 (sm_90)
    the sweep in scripts/gpu/triton_attention.py measured 128-token tiles, 4 warps and plain
    loads fastest for D = 128 at nearly every context, MHA and GQA 32/8 alike (T = 8192-32768:
    64.3-193.6 µs MHA, up to 92% of the copy roofline). sm_80 (not measured) prefetches
    smaller tiles with cp.async (``num_stages`` = 3). The sm_75 builds are compiled in
    tests/test_triton_decode.py (64 KB of shared memory at most). :func:`plan` shrinks the
    tile for short contexts.
    """
    cc = cc or capability()
    heads = heads_per_program(group)
    if cc >= (9, 0):
        block_t, stages = max(16, min(128, 16384 // head_dim)), 1
    elif cc >= (8, 0):
        block_t, stages = max(16, min(128, 4096 // head_dim)), 3
    else:
        block_t, stages = max(16, min(128, 8192 // head_dim)), 1
    if heads * head_dim > 512:
        block_t = max(16, block_t // 2)
    return Config(block_t, 4, stages)


def launch_config(head_dim: int, group: int) -> tuple[int, int]:
    """``(BLOCK_T, num_warps)`` for the paged kernel (labkit.kvcache.paged_attention).

    Kept as it was before the H100 tuning of :func:`kernel_config` (which that kernel has not
    been measured with): 4096 // D tokens on sm_80+, 8192 // D before, halved for wide groups.
    """
    heads = heads_per_program(group)
    block_t = max(16, min(128, (4096 if capability() >= (8, 0) else 8192) // head_dim))
    if heads * head_dim > 512:
        block_t = max(16, block_t // 2)
    return block_t, 4


def heads_per_program(group: int, max_heads: int = MAX_HEADS) -> int:
    """Query heads one program serves from its read of K and V: the group, up to ``max_heads``."""
    return min(triton.next_power_of_2(group), max_heads)


def short_context_block(block_t: int, T: int) -> int:
    """The tile for a context of ``T`` tokens: at most ``block_t``, at least 32, and small
    enough to give 16 tiles, so a short context still splits into many programs
    (H100, T = 512 MHA: 32-token tiles × 8 splits measured 17.9 µs, the fastest swept)."""
    return min(block_t, max(32, triton.next_power_of_2(T) // 16))


# ----------------------------------------------------------------------------------------------
# Host side: validation, workspace, launches

_WORKSPACES: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def workspace(device: torch.device, B: int, Hq: int, num_splits: int, D: int):
    """The cached fp32 partials ``(m [B, Hq, S], l [B, Hq, S], acc [B, Hq, S, D])`` for one shape.

    Reused across calls (calls on one stream run in order, so reuse is safe): no allocation on
    the hot path, and a CUDA graph captured after the first call keeps pointing at them.
    """
    key = (device.type, device.index, B, Hq, num_splits, D)
    ws = _WORKSPACES.get(key)
    if ws is None:
        m = torch.empty((B, Hq, num_splits), dtype=torch.float32, device=device)
        ws = (m, torch.empty_like(m), torch.empty((B, Hq, num_splits, D), dtype=torch.float32, device=device))
        _WORKSPACES[key] = ws
    return ws


def _prepare(q, k, v, scale, lengths, rope, out):
    """Validate everything and return the launch arguments shared by both entry points."""
    device = runtime.device()
    B, Hq, Hkv, T, D = validate_decode(q, k, v, head_dims=HEAD_DIMS, device=device, lengths=lengths)
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    if lengths is not None:
        if lengths.dtype != torch.int32:
            raise TypeError(f"lengths must be int32, got {str(lengths.dtype).replace('torch.', '')}")
        if lengths.device.type == "cpu":  # checking values costs a sync on a GPU, nothing on the CPU
            lo, hi = int(lengths.min()), int(lengths.max())
            if lo < 1 or hi > T:
                raise ValueError(f"lengths must lie in [1, T={T}], got values from {lo} to {hi}")
    if rope is not None:
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
        if positions.device.type == "cpu" and positions.numel():
            lo, hi = int(positions.min()), int(positions.max())
            if lo < 0 or hi >= cos.shape[0]:
                raise ValueError(f"rope positions must lie in [0, {cos.shape[0]}), got {lo} to {hi}")
    else:
        cos = sin = positions = None
    if out is None:
        out = torch.empty_like(q)
    else:
        check_tensor("out", out, ndim=3, dtypes=(q.dtype,), device=device)
        if out.shape != q.shape:
            raise ValueError(f"out must have q's shape {tuple(q.shape)}, got {tuple(out.shape)}")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    return (B, Hq, Hkv, T, D), scale, lengths, (cos, sin, positions), out


def _launch_attend(q, k, v, dims, scale, lengths, rope, out, num_splits, ws, cfg: Config):
    B, Hq, Hkv, T, D = dims
    group = Hq // Hkv
    heads = heads_per_program(group, cfg.max_heads)
    head_chunks = triton.cdiv(group, heads)
    cos, sin, positions = rope
    m_ws, l_ws, acc_ws = ws if ws is not None else (out, out, out)  # unused when not SPLIT
    _attend_kernel[(B * Hkv * head_chunks, num_splits)](
        q, k, v,
        lengths if lengths is not None else q,
        cos if cos is not None else q, sin if sin is not None else q,
        positions if positions is not None else q,
        out, m_ws, l_ws, acc_ws,
        scale * LOG2E, T, num_splits,
        HKV=Hkv, GROUP=group, HEADS=heads, HEAD_CHUNKS=head_chunks, HEAD_DIM=D, BLOCK_T=cfg.block_t,
        NUM_STAGES=cfg.num_stages, HAS_LENGTHS=lengths is not None, HAS_ROPE=cos is not None,
        SPLIT=ws is not None, num_warps=cfg.num_warps,
    )


def _config(q, D: int, group: int, block_t, num_warps, num_stages, max_heads=None) -> Config:
    cfg = kernel_config(D, group, capability(q.device.index) if q.device.type == "cuda" else None)
    overrides = {k: v for k, v in (("block_t", block_t), ("num_warps", num_warps), ("num_stages", num_stages),
                                   ("max_heads", max_heads)) if v is not None}
    return replace(cfg, **overrides)


def triton_decode(q, k, v, *, scale: float | None = None, lengths=None, rope=None, out=None,
                  block_t: int | None = None, num_warps: int | None = None,
                  num_stages: int | None = None) -> torch.Tensor:
    """One-pass decode attention: one program per (sequence, KV head), its query heads at once.

    q: [B, Hq, D]; k, v: [B, Hkv, T, D]; fp16, fp32 or bf16 (where the GPU has it), contiguous,
    D a power of two from 16 to 256, Hq a multiple of Hkv. ``lengths``: optional [B] int32,
    1 ≤ lengths[b] ≤ T. ``rope``: optional ``(cos, sin, positions)`` — fp32 tables
    [max_len, D/2] and int32 positions [B] — rotating q as it is loaded. ``out``: optional
    [B, Hq, D] of q's dtype to write into. Returns [B, Hq, D] in q's dtype. A group of more
    than :data:`MAX_HEADS` query heads takes several programs per KV head.
    ``block_t``, ``num_warps`` and ``num_stages`` override :func:`kernel_config` (tuning).
    """
    dims, scale, lengths, rope, out = _prepare(q, k, v, scale, lengths, rope, out)
    cfg = _config(q, dims[4], dims[1] // dims[2], block_t, num_warps, num_stages)
    _launch_attend(q, k, v, dims, scale, lengths, rope, out, 1, None, cfg)
    return out


def plan_splits(B: int, Hq: int, Hkv: int, T: int, D: int, *, block_t: int | None = None,
                num_splits: int | None = None, device_index: int | None = None, max_heads: int = MAX_HEADS) -> int:
    """The split count :func:`flash_decode` uses: ``num_splits`` or the heuristic, capped at the
    KV tiles and :data:`MAX_SPLITS`.

    The heuristic aims at 4 resident programs per SM when a program serves one query head,
    2 when it serves several (it holds that many q rows and accumulators: about twice the
    registers, so half as many fit). Measured on an H100, fp16 D = 128, 128-token tiles:
    MHA 32 heads was fastest at 16 splits (512 programs) for T >= 4096, GQA 32/8 (4 heads a
    program) at 32 splits (256 programs) for T >= 8192; GQA at 64 splits was 20-25% slower.
    """
    group = Hq // Hkv
    block_t = block_t or short_context_block(kernel_config(D, group, capability(device_index)).block_t, T)
    tiles = triton.cdiv(T, block_t)
    if num_splits is None:
        heads = heads_per_program(group, max_heads)
        programs = B * Hkv * triton.cdiv(group, heads)
        num_splits = num_splits_heuristic(1, programs, T, sm_count(device_index), block_t=block_t,
                                          programs_per_sm=4 if heads == 1 else 2)
    elif not isinstance(num_splits, int) or num_splits < 1:
        raise ValueError(f"num_splits must be a positive int, got {num_splits!r}")
    return min(num_splits, tiles, MAX_SPLITS)


def flash_decode(q, k, v, *, scale: float | None = None, lengths=None, rope=None, num_splits: int | None = None,
                 out=None, block_t: int | None = None, num_warps: int | None = None,
                 num_stages: int | None = None, max_heads: int | None = None) -> torch.Tensor:
    """Flash-decoding: split each sequence's KV range across programs, then merge by log-sum-exp.

    Same arguments and result as :func:`triton_decode`, plus ``num_splits`` (default:
    :func:`num_splits_heuristic` for this GPU; see :func:`plan_splits`). One split runs the
    one-pass kernel alone; more run the split kernel (partials into a cached fp32 workspace)
    and the merge kernel: two launches, no host sync, no allocation when ``out`` is given.
    ``block_t``, ``num_warps``, ``num_stages`` and ``max_heads`` override the configuration
    (tuning); by default the tile is :func:`kernel_config`'s, shrunk for short contexts.
    """
    dims, scale, lengths, rope, out = _prepare(q, k, v, scale, lengths, rope, out)
    B, Hq, Hkv, T, D = dims
    cfg = _config(q, D, Hq // Hkv, block_t, num_warps, num_stages, max_heads)
    if block_t is None:
        cfg = replace(cfg, block_t=short_context_block(cfg.block_t, T))
    num_splits = plan_splits(B, Hq, Hkv, T, D, block_t=cfg.block_t, num_splits=num_splits,
                             device_index=q.device.index, max_heads=cfg.max_heads)
    if num_splits == 1:
        _launch_attend(q, k, v, dims, scale, lengths, rope, out, 1, None, cfg)
        return out
    ws = workspace(q.device, B, Hq, num_splits, D)
    _launch_attend(q, k, v, dims, scale, lengths, rope, out, num_splits, ws, cfg)
    _merge_kernel[(B * Hq,)](*ws, out, num_splits, HEAD_DIM=D, SPLITS_P=triton.next_power_of_2(num_splits),
                             num_warps=4)
    return out


__all__ = ["HEAD_DIMS", "MAX_HEADS", "MAX_SPLITS", "Config", "capability", "flash_attn_num_splits", "flash_decode",
           "heads_per_program", "kernel_config", "launch_config", "num_splits_heuristic", "plan_splits", "short_context_block",
           "sm_count", "triton_decode", "workspace"]
