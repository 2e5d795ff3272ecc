"""Paged decode attention: flash-decoding that reads K/V through block tables.

The cache stores a layer's keys in a pool ``[num_blocks, Hkv, BS, D]``; sequence ``b``'s token
``t`` lives in block ``block_tables[b, t // BS]`` at row ``t % BS``. The kernel is notebook 03's
flash-decoding (:mod:`labkit.attention.triton_decode`, run with ``PAGED=True``) with one
change, the address of a key:

    contiguous:  k + ((b * Hkv + h) * T + t) * D
    paged:       k + ((block_tables[b, t // BS] * Hkv + h) * BS + t % BS) * D

A block of 16 fp16 tokens at D = 128 is 4 KB of contiguous memory per KV head, so a tile of 64
tokens is 4 such runs: the loads stay as wide and as coalesced as the contiguous kernel's,
and the only extra traffic is the block-table row (4 bytes per 16 tokens). The splits, the
scoring paths (``tl.dot`` for GQA on sm_80+ and for one head of a 16-bit cache on sm_90+,
reductions on the T4) and the log-sum-exp merge are shared. Every load and store is masked;
it compiles for the T4 (sm_75) and runs in Triton's interpreter.
"""

from __future__ import annotations

import math

import torch

from labkit import runtime
from labkit.attention.reference import reference_decode
from labkit.attention.triton_decode import HEAD_DIMS as DECODE_HEAD_DIMS
from labkit.attention.triton_decode import config_for, launch, plan_splits
from labkit.attention.validate import check_out, check_tensor, supported_dtypes

# The decode kernel's head dims, and 8 (the serving tests' tiny model): a tile of 8 columns
# takes the reduction path, which needs no 16-wide tl.dot operand.
HEAD_DIMS = (8, *DECODE_HEAD_DIMS)


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
    if D not in HEAD_DIMS:
        raise ValueError(f"head dim {D} is not supported here; expected one of {HEAD_DIMS}")
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
                 num_warps: int | None = None, num_stages: int | None = None) -> torch.Tensor:
    """Decode attention over a paged KV cache.

    q: [B, Hq, D] fp16/fp32 (bf16 where the GPU has it); k_pool, v_pool: one layer's pools
    [num_blocks, Hkv, BS, D] in q's dtype; block_tables: [B, max_blocks] int32 (entry i is the
    block holding tokens i*BS .. i*BS + BS - 1); lengths: [B] int32, tokens per sequence.
    Returns [B, Hq, D] in q's dtype (written into ``out`` if given): softmax(q·kᵀ·scale)·v over
    each sequence's tokens, scale = 1/sqrt(D) by default.

    ``check_values=False`` skips the value checks (and their device sync) for callers that built
    the tables themselves. ``block_n`` (tokens per tile), ``num_splits``, ``num_warps`` and
    ``num_stages`` override the contiguous kernel's configuration for this GPU (for tuning and tests); the
    splits default to the heuristic over the tables' capacity, ``max_blocks × BS``.
    """
    if type(k_pool).__name__ == "QuantKV":  # an 8-bit pool (notebook 08): the dequantizing kernel
        from labkit.attention.quant_decode import quant_paged_decode

        return quant_paged_decode(q, k_pool, v_pool, block_tables, lengths, scale=scale, out=out,
                                  check_values=check_values, block_n=block_n, num_splits=num_splits,
                                  num_warps=num_warps, num_stages=num_stages)
    B, Hq, Hkv, BS, D, _, max_blocks = validate_paged(q, k_pool, v_pool, block_tables, lengths,
                                                      check_values=check_values)
    if block_n is not None and (block_n < 1 or block_n & (block_n - 1)):
        raise ValueError(f"block_n must be a power of two, got {block_n}")
    capacity = max_blocks * BS
    cfg = config_for(D, Hq // Hkv, capacity, device_index=q.device.index, block_t=block_n, num_warps=num_warps,
                     num_stages=num_stages, itemsize=k_pool.element_size())
    splits = plan_splits(B, Hq, Hkv, capacity, cfg, num_splits=num_splits, device_index=q.device.index)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    return launch(q, k_pool, v_pool, check_out(out, q), scale=scale, T=capacity, cfg=cfg, num_splits=splits,
                  lengths=lengths, block_tables=block_tables)


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
