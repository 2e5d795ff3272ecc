"""Paged decode attention in Triton: flash-decoding that reads K/V through block tables.

The cache stores a layer's keys in a pool ``[num_blocks, Hkv, BS, D]``; sequence ``b``'s token
``t`` lives in block ``block_tables[b, t // BS]`` at row ``t % BS``. The kernel is notebook 03's
flash-decoding with one change, the address of a key:

    contiguous:  k + ((b * Hkv + h) * T + t) * D
    paged:       k + ((block_tables[b, t // BS] * Hkv + h) * BS + t % BS) * D

Two launches, as in flash-decoding:

1. ``_paged_split_kernel``, one program per (sequence, KV head, split of the context). It
   loads the ``GROUP = Hq / Hkv`` query heads that share the KV head (GQA: K/V is read once
   for all of them), walks its split's tokens ``BLOCK_N`` at a time with an online softmax in
   fp32, and writes a partial output and its log-sum-exp to a reusable fp32 workspace.
2. ``_merge_kernel``, one program per (sequence, query head), merges the splits' partials by
   their log-sum-exps.

Plain loads and reductions only (no ``tl.dot``): it compiles for the T4 (sm_75) and runs
in Triton's interpreter. Every load and store is masked.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from labkit import runtime
from labkit.attention.reference import reference_decode
from labkit.attention.triton_decode import launch_config as tile_config
from labkit.attention.triton_decode import num_splits_heuristic, sm_count
from labkit.attention.validate import check_tensor, supported_dtypes

LOG2E = 1.4426950408889634  # scores are kept in base 2 so the kernel can use exp2
MAX_SPLITS = 64  # the merge kernel holds all splits of one head in registers


@triton.jit
def _paged_split_kernel(
    q_ptr,  # [B, Hq, D] queries
    k_ptr,  # [num_blocks, Hkv, BS, D] one layer's key pool
    v_ptr,  # [num_blocks, Hkv, BS, D] one layer's value pool (same strides as k)
    bt_ptr,  # [B, max_blocks] int32 block tables: block of tokens i*BS .. i*BS + BS - 1
    len_ptr,  # [B] int32 tokens per sequence
    part_o_ptr,  # [B, Hq, S, D] fp32 workspace: each split's normalised output
    part_lse_ptr,  # [B, Hq, S] fp32 workspace: each split's log2-sum-exp2 of its scores
    qk_scale,  # softmax scale * log2(e)
    stride_qb, stride_qh,  # q strides (batch, head); D is contiguous
    stride_kn, stride_kh, stride_kt,  # pool strides (block, head, token); D is contiguous
    stride_btb,  # block-table stride (batch)
    stride_pb, stride_ph, stride_ps,  # part_o strides (batch, head, split); part_lse is [B, Hq, S] contiguous
    GROUP: tl.constexpr,  # query heads per KV head (Hq / Hkv)
    GROUP_P2: tl.constexpr,  # GROUP rounded up to a power of two (tl.arange needs one)
    HEAD_DIM: tl.constexpr,  # D
    D_P2: tl.constexpr,  # D rounded up to a power of two
    BS: tl.constexpr,  # tokens per block of the pool (a power of two)
    BLOCK_N: tl.constexpr,  # tokens per loop step
):
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)

    # This program's tokens [start, end): sequence b's length cut into num_splits chunks of
    # whole BLOCK_N tiles (so a short sequence's splits stay busy; trailing ones may be empty).
    length = tl.load(len_ptr + b)
    tiles_per_split = tl.cdiv(tl.cdiv(length, BLOCK_N), num_splits)
    start = split * tiles_per_split * BLOCK_N
    end = tl.minimum(start + tiles_per_split * BLOCK_N, length)

    # The GROUP query heads reading this KV head, pre-scaled into base 2: [GROUP_P2, 1, D_P2].
    offs_g = tl.arange(0, GROUP_P2)
    offs_d = tl.arange(0, D_P2)
    g_mask = offs_g < GROUP
    d_mask = offs_d < HEAD_DIM
    heads = kv_head * GROUP + offs_g
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
    q = (q * qk_scale)[:, None, :]

    m_i = tl.full([GROUP_P2], float("-inf"), dtype=tl.float32)  # running max score per head
    l_i = tl.zeros([GROUP_P2], dtype=tl.float32)  # running sum of exp2(score - m_i)
    acc = tl.zeros([GROUP_P2, D_P2], dtype=tl.float32)  # running sum of p * v

    kv_base = kv_head.to(tl.int64) * stride_kh
    bt_row = bt_ptr + b * stride_btb
    offs_t = start + tl.arange(0, BLOCK_N)
    block = tl.load(bt_row + offs_t // BS, mask=offs_t < end, other=0)
    for _ in range(start, end, BLOCK_N):
        # 1. Translate token positions to pool rows through the block table. K and V tiles are
        #    loaded as [1, BLOCK_N, D_P2], the shape the products below broadcast to, so they stay
        #    in the layout they are loaded in (no shuffle through shared memory).
        t_mask = offs_t < end
        rows = kv_base + block.to(tl.int64) * stride_kn + (offs_t % BS) * stride_kt
        ptrs = rows[None, :, None] + offs_d[None, None, :]
        kv_mask = t_mask[None, :, None] & d_mask[None, None, :]
        k = tl.load(k_ptr + ptrs, mask=kv_mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + ptrs, mask=kv_mask, other=0.0).to(tl.float32)
        # Fetch the next tile's block ids now, so their latency hides behind this tile's loads.
        offs_t += BLOCK_N
        block = tl.load(bt_row + offs_t // BS, mask=offs_t < end, other=0)

        # 2. Scores of every head against these keys: [GROUP_P2, BLOCK_N].
        s = tl.sum(q * k, axis=2)
        s = tl.where(t_mask[None, :], s, float("-inf"))

        # 3. Online softmax: rescale what we have to the new running max, add this step.
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v, axis=1)
        m_i = m_new

    # 4. This split's normalised output and log-sum-exp; an empty split (past the sequence's
    #    end) writes lse = -inf and weighs nothing in the merge.
    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
    row = b * stride_pb + heads * stride_ph + split * stride_ps
    tl.store(part_o_ptr + row[:, None] + offs_d[None, :], out, mask=g_mask[:, None] & d_mask[None, :])
    tl.store(part_lse_ptr + (b * tl.num_programs(1) * GROUP + heads) * num_splits + split, lse, mask=g_mask)


@triton.jit
def _merge_kernel(
    part_o_ptr,  # [B, Hq, S, D] fp32 partial outputs
    part_lse_ptr,  # [B, Hq, S] fp32 partial log-sum-exps (base 2), contiguous
    out_ptr,  # [B, Hq, D] output, in q's dtype
    num_splits,  # S
    stride_pb, stride_ph, stride_ps,  # part_o strides
    stride_ob, stride_oh,  # out strides; D is contiguous
    num_heads,  # Hq
    HEAD_DIM: tl.constexpr,  # D
    D_P2: tl.constexpr,  # D rounded up to a power of two
    S_P2: tl.constexpr,  # S rounded up to a power of two
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, S_P2)
    offs_d = tl.arange(0, D_P2)
    s_mask = offs_s < num_splits
    d_mask = offs_d < HEAD_DIM

    # Weight each split by exp2(lse - max lse); split 0 always holds tokens (length >= 1).
    lse = tl.load(part_lse_ptr + (b * num_heads + h) * num_splits + offs_s, mask=s_mask, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, axis=0))
    o = tl.load(part_o_ptr + b * stride_pb + h * stride_ph + offs_s[:, None] * stride_ps + offs_d[None, :],
                mask=s_mask[:, None] & d_mask[None, :], other=0.0)
    out = tl.sum(w[:, None] * o, axis=0) / tl.sum(w, axis=0)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty), mask=d_mask)


_WORKSPACES: dict[tuple, list[torch.Tensor]] = {}  # device -> flat fp32 buffers, the newest (largest) last


def workspace(device: torch.device, B: int, Hq: int, num_splits: int, D: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views ``(part_o [B, Hq, S, D], part_lse [B, Hq, S])`` of a cached fp32 buffer.

    One buffer per device, reused by every call (a serving engine's batch size changes every
    step); when a call needs more it is replaced by one at least twice as large, and the old one
    is kept alive, so a call captured in a CUDA graph keeps valid pointers while the memory stays
    within twice the largest need. Calls share it, so they run in order on one stream (torch's
    current stream, as every labkit kernel does).
    """
    need = B * Hq * num_splits * (D + 1)
    buffers = _WORKSPACES.setdefault((device.type, device.index), [])
    if not buffers or buffers[-1].numel() < need:
        size = max(need, 2 * buffers[-1].numel() if buffers else 1 << 16)
        buffers.append(torch.empty(size, dtype=torch.float32, device=device))
    flat = buffers[-1]
    n = B * Hq * num_splits * D
    return flat[:n].view(B, Hq, num_splits, D), flat[n:need].view(B, Hq, num_splits)


def launch_config(B: int, Hq: int, Hkv: int, D: int, capacity: int, device: torch.device) -> dict:
    """Tile, warp and split counts for one call (``capacity``: the most tokens a sequence can hold).

    The same choices as the contiguous kernel (:mod:`labkit.attention.triton_decode`), so that
    the two differ only in how they address K and V: a [GROUP, BLOCK_N, D] product tile of about
    8K fp32 values, and enough splits of the context for several programs per SM.
    """
    block_n, num_warps = tile_config(triton.next_power_of_2(D), Hq // Hkv)
    splits = num_splits_heuristic(B, Hkv, capacity, sm_count(device.index), block_t=block_n)
    return {"block_n": block_n, "num_warps": num_warps, "num_splits": splits}


def validate_paged(q, k_pool, v_pool, block_tables, lengths, *, check_values: bool = True) -> tuple[int, ...]:
    """Check paged-attention inputs; return ``(B, Hq, Hkv, BS, D, num_blocks, max_blocks)``.

    q: [B, Hq, D]; k_pool, v_pool: [num_blocks, Hkv, BS, D] in q's dtype, BS a power of two;
    block_tables: [B, max_blocks] int32; lengths: [B] int32; all contiguous, on labkit's device.
    ``check_values`` also checks 1 <= lengths <= max_blocks * BS and that every block a
    sequence uses is in the pool (this reads the tensors back: one device sync).
    """
    dev = runtime.device()
    check_tensor("q", q, ndim=3, dtypes=supported_dtypes(), device=dev)
    check_tensor("k_pool", k_pool, ndim=4, dtypes=(q.dtype,), device=dev)
    check_tensor("v_pool", v_pool, ndim=4, dtypes=(q.dtype,), device=dev)
    check_tensor("block_tables", block_tables, ndim=2, dtypes=(torch.int32,), device=dev)
    check_tensor("lengths", lengths, ndim=1, dtypes=(torch.int32,), device=dev)
    B, Hq, D = q.shape
    num_blocks, Hkv, BS, Dk = k_pool.shape
    if v_pool.shape != k_pool.shape:
        raise ValueError(f"v_pool must have k_pool's shape {tuple(k_pool.shape)}, got {tuple(v_pool.shape)}")
    if Dk != D:
        raise ValueError(f"k_pool has head dim {Dk} but q has {D}")
    if Hq % Hkv:
        raise ValueError(f"q's heads ({Hq}) must be a multiple of the pool's KV heads ({Hkv})")
    if BS & (BS - 1):
        raise ValueError(f"the pool's block size (dim 2 of k_pool) must be a power of two, got {BS}")
    if block_tables.shape[0] != B or lengths.shape[0] != B:
        raise ValueError(f"block_tables must be [{B}, max_blocks] and lengths [{B}] for q's batch {B}, got "
                         f"{tuple(block_tables.shape)} and {tuple(lengths.shape)}")
    max_blocks = block_tables.shape[1]
    if max_blocks < 1:
        raise ValueError("block_tables must have at least one column")
    if check_values:
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1 or hi > max_blocks * BS:
            raise ValueError(f"lengths must be in [1, {max_blocks * BS}] (max_blocks * block size), got "
                             f"values in [{lo}, {hi}]")
        used = torch.arange(max_blocks, device=lengths.device)[None, :] < (lengths[:, None] + BS - 1) // BS
        ids = block_tables[used]
        if int(ids.min()) < 0 or int(ids.max()) >= num_blocks:
            raise ValueError(f"block_tables points outside the pool: used entries range over "
                             f"[{int(ids.min())}, {int(ids.max())}], the pool has {num_blocks} blocks")
    return B, Hq, Hkv, BS, D, num_blocks, max_blocks


def paged_decode(q, k_pool, v_pool, block_tables, lengths, *, scale: float | None = None, out=None,
                 check_values: bool = True, block_n: int | None = None, num_splits: int | None = None,
                 num_warps: int | None = None) -> torch.Tensor:
    """Decode attention over a paged KV cache.

    q: [B, Hq, D] fp16/fp32 (bf16 where the GPU has it); k_pool, v_pool: one layer's pools
    [num_blocks, Hkv, BS, D] in q's dtype; block_tables: [B, max_blocks] int32 (entry i is the
    block holding tokens i*BS .. i*BS + BS - 1); lengths: [B] int32, tokens per sequence.
    Returns [B, Hq, D] in q's dtype (written into ``out`` if given): softmax(q·kᵀ·scale)·v over
    each sequence's tokens, scale = 1/sqrt(D) by default.

    ``check_values=False`` skips the value checks (and their device sync) for callers that built
    the tables themselves. ``block_n``, ``num_splits``, ``num_warps`` override
    :func:`launch_config` (for tuning and tests).
    """
    B, Hq, Hkv, BS, D, _, max_blocks = validate_paged(q, k_pool, v_pool, block_tables, lengths,
                                                      check_values=check_values)
    cfg = launch_config(B, Hq, Hkv, D, max_blocks * BS, q.device)
    block_n = block_n or cfg["block_n"]
    if block_n < 1 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two, got {block_n}")
    if num_splits is not None and (not isinstance(num_splits, int) or num_splits < 1):
        raise ValueError(f"num_splits must be a positive int, got {num_splits!r}")
    splits = min(num_splits or cfg["num_splits"], triton.cdiv(max_blocks * BS, block_n), MAX_SPLITS)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if out is None:
        out = torch.empty_like(q)
    else:
        check_tensor("out", out, ndim=3, dtypes=(q.dtype,), device=q.device)
        if out.shape != q.shape:
            raise ValueError(f"out must have q's shape {tuple(q.shape)}, got {tuple(out.shape)}")

    part_o, part_lse = workspace(q.device, B, Hq, splits, D)
    group = Hq // Hkv
    _paged_split_kernel[(B, Hkv, splits)](
        q, k_pool, v_pool, block_tables, lengths, part_o, part_lse,
        scale * LOG2E,
        q.stride(0), q.stride(1),
        k_pool.stride(0), k_pool.stride(1), k_pool.stride(2),
        block_tables.stride(0),
        part_o.stride(0), part_o.stride(1), part_o.stride(2),
        GROUP=group, GROUP_P2=triton.next_power_of_2(group), HEAD_DIM=D, D_P2=triton.next_power_of_2(D),
        BS=BS, BLOCK_N=block_n, num_warps=num_warps or cfg["num_warps"],
    )
    _merge_kernel[(B, Hq)](
        part_o, part_lse, out, splits,
        part_o.stride(0), part_o.stride(1), part_o.stride(2),
        out.stride(0), out.stride(1), Hq,
        HEAD_DIM=D, D_P2=triton.next_power_of_2(D), S_P2=triton.next_power_of_2(splits),
        num_warps=4,
    )
    return out


def gather_paged(pool, block_tables, lengths) -> torch.Tensor:
    """Copy sequences out of a pool into contiguous [B, Hkv, T, D], T = max(lengths).

    pool: [num_blocks, Hkv, BS, D]; rows past a sequence's length are zero. The slow, obvious
    way to read a paged cache: for references and tests.
    """
    BS = pool.shape[2]
    lens = torch.as_tensor(lengths, device=pool.device).long()
    pos = torch.arange(int(lens.max()), device=pool.device)
    valid = pos[None, :] < lens[:, None]  # [B, T]
    # Entries past a sequence's end may be anything (padding); read block 0 there instead.
    blocks = torch.where(valid, block_tables[:, pos // BS].long(), 0)
    out = pool[blocks, :, pos % BS]  # advanced indices around a slice: [B, T, Hkv, D]
    out = torch.where(valid[:, :, None, None], out, torch.zeros((), dtype=pool.dtype, device=pool.device))
    return out.transpose(1, 2).contiguous()


def paged_reference(q, k_pool, v_pool, block_tables, lengths, *, scale: float | None = None) -> torch.Tensor:
    """The float64 answer :func:`paged_decode` must give: gather, then :func:`reference_decode`."""
    k = gather_paged(k_pool, block_tables, lengths)
    v = gather_paged(v_pool, block_tables, lengths)
    return reference_decode(q, k, v, scale=scale, lengths=lengths)
