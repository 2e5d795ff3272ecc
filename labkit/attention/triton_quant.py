"""Flash-decoding over a quantized KV cache: 8-bit K and V dequantized in registers.

The kernel is :mod:`labkit.attention.triton_decode`'s split-K flash-decoding with one change:
what a tile load returns. K and V arrive as 8-bit tiles (``int8``, or ``fp8 e4m3`` on sm_89+)
with one fp32 scale per token (:mod:`labkit.kvcache.quant`), and the scales factor out of the
two products, so the dequantization costs one multiply per token, not one per element:

    s_t = (q · k_t) · scale·log2e  ≈  (q · kq_t) · ks_t · scale·log2e
    Σ_t p_t · v_t                  ≈  Σ_t (p_t · vs_t) · vq_t

The key scale multiplies the token's score after the dot product; the value scale is folded
into the softmax weight before the weighted sum. The 8-bit tile is converted to fp32 (the
reduction path: the T4's, loads and sums only, no int8 ``tl.dot``, no fp8) or to fp16 (the
tensor-core path on sm_80+: an int8 value converts to fp16 exactly) in registers. The split
plan, the fp32 workspace and the log-sum-exp merge (:mod:`labkit.attention.triton_merge`)
are flash-decoding's. The same kernel reads a paged pool through block tables.

Half the bytes halve the time only if the loop keeps up with them: per byte, an 8-bit tile asks
for twice the instructions of an fp16 one (conversions on top). The first version of this kernel
ran 1463 instructions per thread per 128-token tile on sm_90 and streamed int8 at about 2.9 TB/s
on the H100 and the H200 alike, an instruction ceiling, not the memory's. Two changes cut the loop
to 888: V converts to fp16 *before* its layout change (:mod:`labkit.attention.quant_tile`;
Triton otherwise gathered V from shared memory a byte at a time), and the contiguous cache's
whole tiles run unmasked, their pointers stepped a tile, with the partial last tile done once
after the loop. On the H100 the int8 kernel went from 1.38× to 1.60× the fp16 kernel at batch 1,
8k tokens, and from 1.77× to 1.85× at batch 8 (``data/results/h100/quant-loop_*.json``).

This module holds the kernel, its launch configuration and its launch;
:mod:`labkit.attention.quant_decode` holds the entry points that validate their inputs
(``decode_attention(..., impl="triton_int8")``, the paged pool's, notebook 08's).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import triton
import triton.language as tl

from labkit import runtime
from labkit.attention.quant_tile import attend_range, attend_range_t, dot_tile
from labkit.attention.splits import LOG2E
from labkit.attention.triton_merge import merge_splits
from labkit.attention.triton_plan import MAX_DOT_ROWS, Config, capability, heads_per_program, overridden, workspace
from labkit.kvcache.quant import QuantKV


@triton.jit
def _quant_attend_kernel(
    Q,  # [B, Hq, D] queries (fp16/fp32/bf16), contiguous
    K, V,  # 8-bit data: contiguous [B, Hkv, T, D]; paged pools [num_blocks, Hkv, BS, D]
    KS, VS,  # fp32 scales, the data's shape without D: one per (token, KV head)
    BlockTables,  # [B, max_blocks] int32 (read only if PAGED)
    Lengths,  # [B] int32 valid KV length per sequence (read only if HAS_LENGTHS)
    Out,  # [B, Hq, D] (written only if not SPLIT)
    Mws, Lws, Accws,  # fp32 partials for the merge (written only if SPLIT)
    qk_scale,  # softmax scale × log2(e)
    T,  # tokens a sequence can hold
    num_splits,
    stride_bt,
    HKV: tl.constexpr,
    GROUP: tl.constexpr,
    HEADS: tl.constexpr,
    HEAD_CHUNKS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BS: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    SPLIT: tl.constexpr,
    PAGED: tl.constexpr,
    USE_DOT: tl.constexpr,  # dequantize to fp16 and use tl.dot (sm_80+) or reduce in fp32 (the T4)
    BIASED: tl.constexpr = False,  # int8 with tl.dot: biased fp16 tiles, the bias taken off after the dot
    ASM: tl.constexpr = False,  # the tensor-core path's conversions in PTX (a GPU; the interpreter runs none)
    HEADS_ON_N: tl.constexpr = False,  # contiguous tensor-core path: tokens as M, heads as N (quant_tile.dot_tile_t)
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    pid_bh = pid // HEAD_CHUNKS
    b = pid_bh // HKV
    hk = pid_bh % HKV
    head0 = hk * GROUP + (pid % HEAD_CHUNKS) * HEADS

    # 1. This program's KV range (whole tiles, every visited tile holds a valid token).
    if HAS_LENGTHS:
        length = tl.minimum(tl.maximum(tl.load(Lengths + b), 1), T)
    else:
        length = T
    tiles_per_split = tl.cdiv(tl.cdiv(length, BLOCK_T), num_splits)
    t_begin = split * tiles_per_split * BLOCK_T
    t_end = tl.minimum(t_begin + tiles_per_split * BLOCK_T, length)

    # 2. The query heads as one [HEADS, D] tile.
    offs_g = tl.arange(0, HEADS)[:, None]
    offs_d = tl.arange(0, HEAD_DIM)[None, :]
    offs_t = tl.arange(0, BLOCK_T)
    mask_g = head0 + offs_g < (hk + 1) * GROUP
    q_rows = (b * (HKV * GROUP) + head0 + offs_g).to(tl.int64) * HEAD_DIM
    q = tl.load(Q + q_rows + offs_d, mask=mask_g, other=0.0).to(tl.float32)
    if USE_DOT:
        q_op = q.to(tl.float16)
        q_bias = 1152.0 * tl.sum(q_op.to(tl.float32), axis=1, keep_dims=True)  # [HEADS, 1] (BIASED)
        m = tl.full([HEADS, 1], float("-inf"), dtype=tl.float32)
        l = tl.zeros([HEADS, 1], dtype=tl.float32)
        acc = tl.zeros([HEADS, HEAD_DIM], dtype=tl.float32)
    else:
        q3 = q[:, None, :]
        m = tl.full([HEADS, 1, 1], float("-inf"), dtype=tl.float32)
        l = tl.zeros([HEADS, 1, 1], dtype=tl.float32)
        acc = tl.zeros([HEADS, 1, HEAD_DIM], dtype=tl.float32)

    # 3. Stream the 8-bit K and V tiles and their per-token scales.
    if USE_DOT and not PAGED:
        row0 = pid_bh.to(tl.int64) * T + t_begin  # the first (token, KV head) row of this range
        if HEADS_ON_N:
            q_t = tl.trans(q_op)  # [D, HEADS]
            m_t, l_t, acc_t = attend_range_t(q_t, tl.reshape(q_bias, [1, HEADS]), K, V, KS, VS, row0,
                                             t_end - t_begin, qk_scale, HEADS, HEAD_DIM, BLOCK_T, NUM_STAGES, ASM)
            m, l, acc = tl.reshape(m_t, [HEADS, 1]), tl.reshape(l_t, [HEADS, 1]), tl.trans(acc_t)
        else:
            m, l, acc = attend_range(q_op, q_bias, K, V, KS, VS, row0, t_end - t_begin, qk_scale, HEADS, HEAD_DIM,
                                     BLOCK_T, NUM_STAGES, BIASED, ASM)
    else:
        if PAGED:
            table = BlockTables + b.to(tl.int64) * stride_bt
            head_row = hk.to(tl.int64) * BS  # a pool block holds [Hkv, BS] rows
        else:
            head_row = pid_bh.to(tl.int64) * T  # this (sequence, KV head)'s first row
        for start in tl.range(t_begin, t_end, BLOCK_T, num_stages=NUM_STAGES):
            t = start + offs_t
            mask_t = t < t_end
            if PAGED:  # token t is row t % BS of pool block BlockTables[b, t // BS]
                block = tl.load(table + t // BS, mask=mask_t, other=0)
                srow = block.to(tl.int64) * (HKV * BS) + head_row + t % BS
            else:
                srow = head_row + t  # the row of (token, KV head): its scale's index
            rows = srow * HEAD_DIM  # its data's first element
            ks = tl.load(KS + srow, mask=mask_t, other=0.0)  # [BLOCK_T] fp32
            vs = tl.load(VS + srow, mask=mask_t, other=0.0)
            if USE_DOT:
                kv_offs = rows[:, None] + offs_d  # [BLOCK_T, D]
                kq = tl.load(K + kv_offs, mask=mask_t[:, None], other=0.0)
                vq = tl.load(V + kv_offs, mask=mask_t[:, None], other=0.0)
                m, l, acc = dot_tile(q_op, q_bias, m, l, acc, kq, vq, ks, vs, mask_t, qk_scale, True, BIASED, ASM)
            else:
                kv_offs = rows[None, :, None] + offs_d[:, None, :]  # [1, BLOCK_T, D]
                mask3 = mask_t[None, :, None]
                k = tl.load(K + kv_offs, mask=mask3, other=0.0).to(tl.float32)
                v = tl.load(V + kv_offs, mask=mask3, other=0.0).to(tl.float32)
                ks3 = (ks * qk_scale)[None, :, None]
                s = tl.sum(q3 * k, axis=2, keep_dims=True) * ks3  # [HEADS, BLOCK_T, 1]
                s = tl.where(mask3, s, float("-inf"))
                m_new = tl.maximum(m, tl.max(s, axis=1, keep_dims=True))
                alpha = tl.exp2(m - m_new)
                p = tl.exp2(s - m_new)
                l = l * alpha + tl.sum(p, axis=1, keep_dims=True)
                acc = acc * alpha + tl.sum((p * vs[None, :, None]) * v, axis=1, keep_dims=True)
                m = m_new

    # 4. The normalised output, or this chunk's partial for the merge.
    acc2 = tl.reshape(acc, [HEADS, HEAD_DIM])
    m2 = tl.reshape(m, [HEADS, 1])
    l2 = tl.reshape(l, [HEADS, 1])
    if SPLIT:
        part = (b * (HKV * GROUP) + head0 + offs_g).to(tl.int64) * num_splits + split
        tl.store(Mws + part, m2, mask=mask_g)
        tl.store(Lws + part, l2, mask=mask_g)
        tl.store(Accws + part * HEAD_DIM + offs_d, acc2, mask=mask_g)
    else:
        tl.store(Out + q_rows + offs_d, (acc2 / l2).to(Out.dtype.element_ty), mask=mask_g)


BIASED_INT8 = False  # int8 on the tensor-core path: biased tiles (measured slower on the H200), or the subtraction


def quant_config(head_dim: int, group: int, cc: tuple[int, int] | None = None, *, use_dot: bool | None = None,
                 paged: bool = False) -> Config:
    """The launch configuration of the quantized kernel for a head dim, GQA group and GPU.

    The T4 (and every GPU before sm_80) reduces in fp32: the 8-bit tile costs the registers
    of the fp32 values it becomes, so the tiles are the fp16 kernel's (64 tokens at D = 128).
    sm_80+ dequantizes to fp16 and scores with ``tl.dot``.

    On sm_90, a contiguous cache with D ≤ 128 and up to 8 query heads a KV head runs one-warp
    programs over 32-token tiles, three stages deep, with the tokens as the MMA's M side and the
    heads as N (:func:`~labkit.attention.quant_tile.dot_tile_t`). With one warp a tile's softmax
    needs no reduction across warps and p·V no exchange of p through shared memory; with the
    heads on N a lone query pads N to 8 rather than M to 16. The build takes 167 registers and
    25 KB of shared memory (Triton 3.6), so eight fit an SM; the splits aim at four, with at
    least four tiles a split for one head (a shorter range is mostly its pipeline's fill) and
    no floor for a group. Fewer, longer programs stream faster than a full SM: on an H100
    (2026-12-07, ``data/results/h100/quant-splits_*.json``, ``scripts/gpu/quant_splits.py``)
    aiming at four was never more than 1% behind aiming at 3, 5 or 7, and level with seven or
    faster at every shape, MHA and GQA 4. At batch 1, 8k tokens that is 16 splits and 28.7-29.1
    µs, against 26 splits and 30.2-31.0 µs aimed at seven: 1.71× the fp16 kernel
    (``h100/quant_*.json``). Against the 128-token, 4-warp build below (``h100/quant-plan_*.json``,
    ``h100/quant-plan-gqa4_*.json``): 29.1 against 30.6 µs at batch 1, 8k (MHA), 11.4 against
    13.7 µs at 2k, 11.7 against 14.7 µs with GQA 4 at 8k. Not yet timed on an H200.

    Otherwise (larger groups, the paged pool, D = 256, sm_80) a tile of 128 tokens keeps as many
    bytes in flight per program as the fp16 kernel's 64, three stages deep on sm_90: the H200 sweep in
    ``labkit.bench.quant`` measured it fastest among 64-256 tokens, 4 or 8 warps and 1-4 stages
    (``data/results/quant-sweep_nvidia-h200.json``). That build takes 228 registers a thread
    on sm_90 (V staged as fp16, :mod:`~labkit.attention.quant_tile`), so two programs fit an
    SM, and the splits aim at two.
    """
    cc = cc or capability()
    if use_dot is None:
        use_dot = head_dim >= 16 and cc >= (8, 0)
    if use_dot:
        if cc >= (9, 0) and group <= 8 and head_dim <= 128 and not paged:
            return Config(block_t=32, num_warps=1, num_stages=3, use_dot=True, programs_per_sm=4,
                          min_split_tiles=4 if group == 1 else 1, heads_on_n=True)
        return Config(block_t=128, num_warps=4, num_stages=3 if cc >= (9, 0) else 1, use_dot=True,
                      programs_per_sm=2)
    heads = heads_per_program(group, False)
    block_t = min(128, 8192 // head_dim)
    if heads > 1:
        block_t = min(block_t, 16384 // (heads * head_dim))
    return Config(block_t=max(16, block_t), num_warps=4, num_stages=1, use_dot=False,
                  programs_per_sm=4 if heads == 1 else 2)


def quant_config_for(D: int, group: int, T: int, *, cc=None, block_t=None, num_warps=None, num_stages=None,
                     use_dot=None, short_context: bool = True, paged: bool = False,
                     heads_on_n: bool | None = None) -> Config:
    """:func:`quant_config`, the tile shrunk for short contexts, then any overrides.

    ``heads_on_n`` (default: the plan's, kept only while the program is one warp) picks the
    loop with the query heads on the MMA's N side, which runs one-warp programs only and
    exists on the contiguous tensor-core path alone (elsewhere it is off).
    """
    if heads_on_n and num_warps not in (None, 1):
        raise ValueError(f"heads_on_n runs one-warp programs; got num_warps={num_warps} (pass 1, or leave it out)")
    if use_dot is None and block_t is not None and block_t < 16:
        use_dot = False
    cfg = overridden(quant_config(D, group, cc, use_dot=use_dot, paged=paged), T, block_t=block_t,
                     num_warps=1 if heads_on_n else num_warps, num_stages=num_stages, short_context=short_context)
    if heads_on_n is None:
        heads_on_n = cfg.heads_on_n and cfg.num_warps == 1
    return replace(cfg, heads_on_n=bool(heads_on_n) and cfg.use_dot and not paged)


def quant_constexprs(Hkv: int, group: int, D: int, cfg: Config, *, bs: int, has_lengths: bool, split: bool,
                     paged: bool, biased: bool = False, asm: bool | None = None) -> dict:
    """The kernel's compile-time arguments for a launch (the compile tests build the same).
    ``asm`` (default: not in sim mode) writes the tensor-core path's conversions in PTX.
    ``cfg.heads_on_n`` (the contiguous tensor-core path only) puts the query heads on the MMA's N
    side, padded by Triton to 8 rather than to :data:`~labkit.attention.triton_plan.MIN_DOT_ROWS`."""
    heads_on_n = cfg.heads_on_n and cfg.use_dot and not paged
    heads = min(triton.next_power_of_2(group), MAX_DOT_ROWS) if heads_on_n else heads_per_program(group, cfg.use_dot)
    asm = not runtime.is_sim() if asm is None else asm
    return dict(HKV=Hkv, GROUP=group, HEADS=heads, HEAD_CHUNKS=triton.cdiv(group, heads), HEAD_DIM=D,
                BLOCK_T=cfg.block_t, BS=bs, NUM_STAGES=cfg.num_stages, HAS_LENGTHS=has_lengths, SPLIT=split,
                PAGED=paged, USE_DOT=cfg.use_dot, BIASED=biased and cfg.use_dot and not heads_on_n,
                ASM=asm and cfg.use_dot, HEADS_ON_N=heads_on_n)


def quant_launch(q, k: QuantKV, v: QuantKV, out, *, scale: float, T: int, cfg: Config, num_splits: int,
                 lengths=None, block_tables=None, biased: bool | None = None):
    """Launch the kernel (and the merge when ``num_splits > 1``) on validated inputs; returns ``out``."""
    B, Hq, D = q.shape
    Hkv = k.data.shape[1]
    ws = workspace(q.device, B, Hq, num_splits, D) if num_splits > 1 else (out, out, out)
    if biased is None:
        biased = BIASED_INT8 and k.data.dtype == torch.int8
    meta = quant_constexprs(Hkv, Hq // Hkv, D, cfg, bs=k.data.shape[2] if block_tables is not None else 1,
                            has_lengths=lengths is not None, split=num_splits > 1, paged=block_tables is not None,
                            biased=biased and k.data.dtype == torch.int8)
    _quant_attend_kernel[(B * Hkv * meta["HEAD_CHUNKS"], num_splits)](
        q, k.data, v.data, k.scale, v.scale,
        block_tables if block_tables is not None else q,
        lengths if lengths is not None else q,
        out, *ws,
        scale * LOG2E, T, num_splits, block_tables.stride(0) if block_tables is not None else 0,
        **meta, num_warps=cfg.num_warps,
    )
    if num_splits > 1:
        merge_splits(ws, out, num_splits, B * Hq, D)
    return out


__all__ = ["BIASED_INT8", "quant_config", "quant_config_for", "quant_constexprs", "quant_launch"]
