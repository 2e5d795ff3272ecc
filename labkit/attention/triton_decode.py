"""Decode attention in Triton: a one-pass kernel and flash-decoding (split-K + log-sum-exp merge).

One query token per sequence attends to its KV cache. The work is all memory traffic, so a
kernel is fast when every SM streams K and V at once (:mod:`labkit.attention.triton_plan`
picks the tiles, the scoring path and the splits):

* :func:`triton_decode` runs one program per (sequence, KV head). The program loads the
  query heads of its GQA group as one tile, then streams K and V in ``[BLOCK_T, D]`` tiles
  with an online softmax in fp32: one read of K and V serves every query head of the group.
* :func:`flash_decode` splits each sequence's KV range across ``num_splits`` programs, so
  ``batch × kv_heads × num_splits`` programs fill the GPU even at batch 1. Each writes a
  partial ``(m, l, acc)`` (running max, sum of exponentials, unnormalised output) to a cached
  fp32 workspace, and :mod:`labkit.attention.triton_merge` combines them by log-sum-exp.

Scores live in the log2 domain (scaled by scale·log2 e) so the kernels use ``exp2``. The same
kernel reads a paged cache (:mod:`labkit.kvcache.paged_attention`): a key's address goes through
the block table, whose entries are read a tile ahead. ``rope=(cos, sin, positions)`` rotates
the query as it is loaded (rotate-half, :mod:`labkit.rope`). Nothing synchronises with the
host or allocates on the hot path when ``out=`` is given, so a call can be captured in a CUDA
graph once it has run outside one.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from labkit.attention.splits import LOG2E, MAX_SPLITS
from labkit.attention.triton_args import prepare
from labkit.attention.triton_merge import merge_splits
from labkit.attention.triton_plan import (HEAD_DIMS, Config, config_for, default_splits, heads_per_program, kernel_config,
                                          plan_splits, short_context_block, workspace)


@triton.jit
def _attend_kernel(
    Q,  # [B, Hq, D] queries, contiguous
    K, V,  # contiguous: [B, Hkv, T, D]; paged: pools [num_blocks, Hkv, BS, D]
    BlockTables,  # [B, max_blocks] int32, a sequence's pool blocks in order (read only if PAGED)
    Lengths,  # [B] int32 valid KV length per sequence (read only if HAS_LENGTHS)
    Cos, Sin,  # RoPE tables [max_len, D/2] fp32 (read only if HAS_ROPE)
    Positions,  # [B] int32 the query's position per sequence (read only if HAS_ROPE)
    Out,  # [B, Hq, D] the output (written only if not SPLIT)
    Mws, Lws,  # [B, Hq, num_splits] fp32 partial running max and sum (written only if SPLIT)
    Accws,  # [B, Hq, num_splits, D] fp32 partial unnormalised output (written only if SPLIT)
    qk_scale,  # softmax scale × log2(e): scores live in the log2 domain
    T,  # tokens a sequence can hold: k.shape[2], or max_blocks × BS when PAGED
    num_splits,  # programs per (sequence, KV head) along T
    stride_bt,  # BlockTables' row stride
    HKV: tl.constexpr,  # KV heads
    GROUP: tl.constexpr,  # query heads per KV head (Hq // Hkv)
    HEADS: tl.constexpr,  # query-head rows per program: a power of two
    HEAD_CHUNKS: tl.constexpr,  # programs sharing one KV head, ceil(GROUP / HEADS)
    HEAD_DIM: tl.constexpr,  # D, a power of two
    BLOCK_T: tl.constexpr,  # KV tokens per tile
    BS: tl.constexpr,  # tokens per pool block (PAGED), a power of two
    NUM_STAGES: tl.constexpr,  # K/V tiles in flight per program (sm_80+ prefetches them asynchronously)
    HAS_LENGTHS: tl.constexpr,
    HAS_ROPE: tl.constexpr,
    SPLIT: tl.constexpr,  # write partials to the workspace (flash-decoding) or the final output
    PAGED: tl.constexpr,  # K and V are pools read through BlockTables
    USE_DOT: tl.constexpr,  # scores and p·V as matrix products (see triton_plan) or as reductions
):
    pid = tl.program_id(0)  # which (sequence, KV head, chunk of its query heads)
    split = tl.program_id(1)  # which chunk of the sequence's KV range
    pid_bh = pid // HEAD_CHUNKS  # (sequence, KV head)
    b = pid_bh // HKV
    hk = pid_bh % HKV
    head0 = hk * GROUP + (pid % HEAD_CHUNKS) * HEADS  # first query head of this program

    # 1. This program's KV range: the sequence's valid length cut into num_splits chunks of
    #    whole tiles, so every tile the loop visits holds at least one valid token.
    if PAGED:
        # The block table is the one read the contiguous kernel does not have, and it would
        # stand between the length's read and the first K/V loads. Guess the range from the
        # capacity T (right whenever the sequence fills its table) and read the first tile's
        # blocks now, beside the length; a wrong guess reads them again below.
        table = BlockTables + b.to(tl.int64) * stride_bt
        t_guess = split * tl.cdiv(tl.cdiv(T, BLOCK_T), num_splits) * BLOCK_T
        t = t_guess + tl.arange(0, BLOCK_T)
        block = tl.load(table + t // BS, mask=t < T, other=0)
    if HAS_LENGTHS:
        length = tl.minimum(tl.maximum(tl.load(Lengths + b), 1), T)
    else:
        length = T
    tiles_per_split = tl.cdiv(tl.cdiv(length, BLOCK_T), num_splits)
    t_begin = split * tiles_per_split * BLOCK_T
    t_end = tl.minimum(t_begin + tiles_per_split * BLOCK_T, length)

    # 2. The program's query heads as one [HEADS, D] tile in fp32, rotated if asked.
    offs_g = tl.arange(0, HEADS)[:, None]  # query-head rows
    offs_d = tl.arange(0, HEAD_DIM)[None, :]  # head dims, contiguous: 16-byte loads
    offs_t = tl.arange(0, BLOCK_T)  # tokens of a tile
    mask_g = head0 + offs_g < (hk + 1) * GROUP  # pad rows (tl.dot's 16) and a partial last chunk
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
    if USE_DOT:
        # tensor-core operands in the cache's dtype; the scale is applied to the fp32 scores
        q_op = q.to(K.dtype.element_ty)
        m = tl.full([HEADS, 1], float("-inf"), dtype=tl.float32)  # running max of scores
        l = tl.zeros([HEADS, 1], dtype=tl.float32)  # running sum of 2^(score − m)
        acc = tl.zeros([HEADS, HEAD_DIM], dtype=tl.float32)  # running Σ 2^(score − m)·v
    else:
        # [HEADS, 1, D] against [1, BLOCK_T, D] tiles; reductions keep their dimension, so
        # every tile shares one register layout and nothing is shuffled inside the loop
        q3 = (q * qk_scale)[:, None, :]
        m = tl.full([HEADS, 1, 1], float("-inf"), dtype=tl.float32)
        l = tl.zeros([HEADS, 1, 1], dtype=tl.float32)
        acc = tl.zeros([HEADS, 1, HEAD_DIM], dtype=tl.float32)

    # 3. Stream K and V tile by tile with an online softmax per query head.
    if PAGED:
        kv_head = hk.to(tl.int64) * BS * HEAD_DIM  # a block holds [Hkv, BS, D]
        if t_begin != t_guess:  # a shorter sequence: its chunks start elsewhere
            block = tl.load(table + (t_begin + offs_t) // BS, mask=t_begin + offs_t < t_end, other=0)
    else:
        kv_head = pid_bh.to(tl.int64) * T * HEAD_DIM  # this (sequence, KV head)'s [T, D] slab
    for start in tl.range(t_begin, t_end, BLOCK_T, num_stages=NUM_STAGES):
        t = start + offs_t
        mask_t = t < t_end
        if PAGED:  # token t lives at row t % BS of pool block BlockTables[b, t // BS]
            rows = kv_head + block.to(tl.int64) * (HKV * BS * HEAD_DIM) + (t % BS) * HEAD_DIM
            t_next = t + BLOCK_T
        else:
            rows = kv_head + t.to(tl.int64) * HEAD_DIM
        # The next tile's blocks are read while this tile's K and V are in flight, so the
        # table never stands between two tiles' loads. Where that read is issued matters:
        # after the K/V loads the matrix-product loop keeps both in flight longer (measured
        # faster for GQA), while in the reduction loop it keeps more registers live (measured
        # slower for MHA).
        if USE_DOT:
            kv_offs = rows[:, None] + offs_d  # [BLOCK_T, D]
            k = tl.load(K + kv_offs, mask=mask_t[:, None], other=0.0)
            v = tl.load(V + kv_offs, mask=mask_t[:, None], other=0.0)
            if PAGED:
                block = tl.load(table + t_next // BS, mask=t_next < t_end, other=0)
            s = tl.dot(q_op, tl.trans(k), input_precision="ieee") * qk_scale  # [HEADS, BLOCK_T]
            s = tl.where(mask_t[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1, keep_dims=True))
            alpha = tl.exp2(m - m_new)  # rescales what was accumulated under the old max
            p = tl.exp2(s - m_new)
            l = l * alpha + tl.sum(p, axis=1, keep_dims=True)
            acc = acc * alpha + tl.dot(p.to(V.dtype.element_ty), v, input_precision="ieee")
        else:
            if PAGED:
                block = tl.load(table + t_next // BS, mask=t_next < t_end, other=0)
            kv_offs = rows[None, :, None] + offs_d[:, None, :]  # [1, BLOCK_T, D]
            mask3 = mask_t[None, :, None]
            k = tl.load(K + kv_offs, mask=mask3, other=0.0).to(tl.float32)
            v = tl.load(V + kv_offs, mask=mask3, other=0.0).to(tl.float32)
            s = tl.sum(q3 * k, axis=2, keep_dims=True)  # scores [HEADS, BLOCK_T, 1]
            s = tl.where(mask3, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1, keep_dims=True))
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(s - m_new)
            l = l * alpha + tl.sum(p, axis=1, keep_dims=True)
            acc = acc * alpha + tl.sum(p * v, axis=1, keep_dims=True)
        m = m_new

    # 4. Write the normalised output, or this chunk's partial for the merge.
    acc2 = tl.reshape(acc, [HEADS, HEAD_DIM])
    m2 = tl.reshape(m, [HEADS, 1])
    l2 = tl.reshape(l, [HEADS, 1])
    if SPLIT:
        part = (b * (HKV * GROUP) + head0 + offs_g).to(tl.int64) * num_splits + split  # [HEADS, 1]
        tl.store(Mws + part, m2, mask=mask_g)
        tl.store(Lws + part, l2, mask=mask_g)
        tl.store(Accws + part * HEAD_DIM + offs_d, acc2, mask=mask_g)
    else:
        tl.store(Out + q_rows + offs_d, (acc2 / l2).to(Out.dtype.element_ty), mask=mask_g)


def constexprs(Hkv: int, group: int, D: int, cfg: Config, *, bs: int, has_lengths: bool, has_rope: bool,
               split: bool, paged: bool) -> dict:
    """``_attend_kernel``'s compile-time arguments for a launch (the T4 compile tests build the same)."""
    heads = heads_per_program(group, cfg.use_dot)
    return dict(HKV=Hkv, GROUP=group, HEADS=heads, HEAD_CHUNKS=triton.cdiv(group, heads), HEAD_DIM=D,
                BLOCK_T=cfg.block_t, BS=bs, NUM_STAGES=cfg.num_stages, HAS_LENGTHS=has_lengths,
                HAS_ROPE=has_rope, SPLIT=split, PAGED=paged, USE_DOT=cfg.use_dot)


def launch(q, k, v, out, *, scale: float, T: int, cfg: Config, num_splits: int, lengths=None, rope=None,
           block_tables=None) -> torch.Tensor:
    """Launch the kernel (and the merge when ``num_splits > 1``) on validated inputs.

    ``T``: tokens a sequence can hold; ``block_tables`` ([B, max_blocks] int32) makes ``k``
    and ``v`` pools ``[num_blocks, Hkv, BS, D]``. Returns ``out`` ([B, Hq, D]).
    """
    B, Hq, D = q.shape
    Hkv = k.shape[1]
    cos, sin, positions = rope if rope is not None else (None, None, None)
    ws = workspace(q.device, B, Hq, num_splits, D) if num_splits > 1 else (out, out, out)  # unused if not SPLIT
    meta = constexprs(Hkv, Hq // Hkv, D, cfg, bs=k.shape[2] if block_tables is not None else 1,
                      has_lengths=lengths is not None, has_rope=rope is not None, split=num_splits > 1,
                      paged=block_tables is not None)
    _attend_kernel[(B * Hkv * meta["HEAD_CHUNKS"], num_splits)](
        q, k, v,
        block_tables if block_tables is not None else q,
        lengths if lengths is not None else q,
        cos if cos is not None else q, sin if sin is not None else q,
        positions if positions is not None else q,
        out, *ws,
        scale * LOG2E, T, num_splits, block_tables.stride(0) if block_tables is not None else 0,
        **meta, num_warps=cfg.num_warps,
    )
    if num_splits > 1:
        merge_splits(ws, out, num_splits, B * Hq, D)
    return out


def triton_decode(q, k, v, *, scale: float | None = None, lengths=None, rope=None, out=None,
                  block_t: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
                  use_dot: bool | None = None) -> torch.Tensor:
    """One-pass decode attention: one program per (sequence, KV head), its query heads at once.

    q: [B, Hq, D]; k, v: [B, Hkv, T, D]; fp16, fp32 or bf16 (where the GPU has it), contiguous,
    D a power of two from 16 to 256, Hq a multiple of Hkv. ``lengths``: optional [B] int32,
    1 ≤ lengths[b] ≤ T. ``rope``: optional ``(cos, sin, positions)`` — fp32 tables
    [max_len, D/2] and int32 positions [B] — rotating q as it is loaded. ``out``: optional
    [B, Hq, D] of q's dtype to write into. Returns [B, Hq, D] in q's dtype. ``block_t``,
    ``num_warps``, ``num_stages`` and ``use_dot`` override :func:`kernel_config` (tuning).
    """
    (B, Hq, Hkv, T, D), scale, lengths, rope, out = prepare(q, k, v, scale, lengths, rope, out, HEAD_DIMS)
    cfg = config_for(D, Hq // Hkv, T, device_index=q.device.index, block_t=block_t, num_warps=num_warps,
                     num_stages=num_stages, use_dot=use_dot, short_context=False, itemsize=k.element_size())
    return launch(q, k, v, out, scale=scale, T=T, cfg=cfg, num_splits=1, lengths=lengths, rope=rope)


def flash_decode(q, k, v, *, scale: float | None = None, lengths=None, rope=None, num_splits: int | None = None,
                 out=None, block_t: int | None = None, num_warps: int | None = None,
                 num_stages: int | None = None, use_dot: bool | None = None) -> torch.Tensor:
    """Flash-decoding: split each sequence's KV range across programs, then merge by log-sum-exp.

    Same arguments and result as :func:`triton_decode`, plus ``num_splits`` (default: the
    heuristic for this GPU, :func:`labkit.attention.triton_plan.plan_splits`). One split runs
    the one-pass kernel alone; more run the split kernel (partials into a cached fp32
    workspace) and the merge kernel: two launches, no host sync, no allocation when ``out``
    is given. By default the tile is :func:`kernel_config`'s, shrunk for short contexts.
    """
    (B, Hq, Hkv, T, D), scale, lengths, rope, out = prepare(q, k, v, scale, lengths, rope, out, HEAD_DIMS)
    cfg = config_for(D, Hq // Hkv, T, device_index=q.device.index, block_t=block_t, num_warps=num_warps,
                     num_stages=num_stages, use_dot=use_dot, itemsize=k.element_size())
    splits = plan_splits(B, Hq, Hkv, T, cfg, num_splits=num_splits, device_index=q.device.index)
    return launch(q, k, v, out, scale=scale, T=T, cfg=cfg, num_splits=splits, lengths=lengths, rope=rope)


__all__ = ["HEAD_DIMS", "MAX_SPLITS", "config_for", "constexprs", "default_splits", "flash_decode", "heads_per_program",
           "kernel_config", "launch", "plan_splits", "short_context_block", "triton_decode", "workspace"]
