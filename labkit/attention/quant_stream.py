"""The quantized kernel with balanced work: every program streams the same number of tiles.

Flash-decoding splits each (sequence, KV head) into ``S`` chunks, so it launches
``rows × S`` programs, and a GPU runs them ``slots = SMs × programs per SM`` at a time. When
the programs do not fill the slots evenly, some SMs finish early and idle: 32 heads at batch 1
make 256 programs for an H100's 264 slots, so 8 SMs stream half as much as the other 124,
and the kernel lasts as long as the busiest SM. Stream-K (as in Stream-K GEMM, Osama et al.,
2023) numbers every tile of every row one after the other, ``N = rows × tiles_per_row``, and
gives program ``p`` of ``P`` the tiles ``[p·N // P, (p+1)·N // P)``: each program streams
``N / P`` tiles, give or take one, and a range may cross from one row into the next.

A program leaves one partial ``(m, l, acc)`` per row it touches, in the row's next free slot:
the slot of program ``p`` in row ``r`` is ``p`` minus the first program of ``r``. The merge
(:func:`merge_stream`) computes how many programs touched each row with the same arithmetic
and combines exactly those slots, as flash-decoding's merge does.

Only a contiguous cache of one length can be numbered so (a ``lengths`` or a paged pool
gives every row its own count of tiles); :mod:`labkit.attention.triton_quant`'s split kernel
serves those.
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl

from labkit.attention.quant_tile import attend_range
from labkit.attention.splits import LOG2E
from labkit.attention.triton_plan import Config, heads_per_program, workspace


@triton.jit
def _program_of(tile, total_tiles, programs):
    """The program whose range ``[p·N // P, (p+1)·N // P)`` holds global tile ``tile``."""
    return ((tile + 1) * programs - 1) // total_tiles


@triton.jit
def _stream_attend_kernel(
    Q,  # [B, Hq, D] queries (fp16/fp32/bf16), contiguous
    K, V,  # 8-bit data [B, Hkv, T, D], contiguous
    KS, VS,  # fp32 scales [B, Hkv, T]
    Mws, Lws, Accws,  # fp32 partials [B·Hq, SLOTS] and [B·Hq, SLOTS, D], one slot per program of a row
    qk_scale,  # softmax scale × log2(e)
    T,  # tokens per sequence
    tiles_per_row,  # cdiv(T, BLOCK_T)
    total_tiles,  # rows × tiles_per_row; a row is one (sequence, KV head, chunk of query heads)
    slots,  # partial slots per query row (at least the most programs that touch one row)
    HKV: tl.constexpr,
    GROUP: tl.constexpr,  # query heads per KV head
    HEADS: tl.constexpr,  # query heads per program (the tl.dot rows, padded)
    HEAD_CHUNKS: tl.constexpr,  # programs' rows per KV head: cdiv(GROUP, HEADS)
    HEAD_DIM: tl.constexpr,
    BLOCK_T: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    BIASED: tl.constexpr,
    ASM: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    programs = tl.num_programs(0)

    # 1. This program's tiles: an equal share of all rows' tiles, numbered row after row.
    g0 = pid * total_tiles // programs
    g1 = (pid + 1) * total_tiles // programs
    offs_g = tl.arange(0, HEADS)[:, None]
    offs_d = tl.arange(0, HEAD_DIM)[None, :]
    for r in range(g0 // tiles_per_row, (g1 - 1) // tiles_per_row + 1):
        # 2. Row r's part of the range, and its query heads as one [HEADS, D] tile.
        pid_bh = r // HEAD_CHUNKS
        b = pid_bh // HKV
        hk = pid_bh % HKV
        head0 = hk * GROUP + (r % HEAD_CHUNKS) * HEADS
        first = r * tiles_per_row
        t_begin = (tl.maximum(g0, first) - first) * BLOCK_T
        t_end = tl.minimum((tl.minimum(g1, first + tiles_per_row) - first) * BLOCK_T, T)
        mask_g = head0 + offs_g < (hk + 1) * GROUP
        q_rows = b * (HKV * GROUP) + head0 + offs_g
        q_op = tl.load(Q + q_rows * HEAD_DIM + offs_d, mask=mask_g, other=0.0).to(tl.float16)
        q_bias = 1152.0 * tl.sum(q_op.to(tl.float32), axis=1, keep_dims=True)  # [HEADS, 1] (BIASED)

        # 3. Stream the 8-bit K and V tiles and their scales (:func:`attend_range`).
        m, l, acc = attend_range(q_op, q_bias, K, V, KS, VS, pid_bh * T + t_begin, t_end - t_begin, qk_scale,
                                 HEADS, HEAD_DIM, BLOCK_T, NUM_STAGES, BIASED, ASM)

        # 4. The row's partial, in this program's slot of the row.
        part = q_rows * slots + (pid - _program_of(first, total_tiles, programs))
        tl.store(Mws + part, m, mask=mask_g)
        tl.store(Lws + part, l, mask=mask_g)
        tl.store(Accws + part * HEAD_DIM + offs_d, acc, mask=mask_g)


@triton.jit
def _stream_merge_kernel(
    Mws, Lws, Accws,  # the partials of _stream_attend_kernel
    Out,  # [B·Hq, D] the output, q's dtype
    tiles_per_row, total_tiles, programs, slots,  # the split kernel's numbering
    HKV: tl.constexpr,
    GROUP: tl.constexpr,
    HEADS: tl.constexpr,
    HEAD_CHUNKS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    SLOTS_P: tl.constexpr,  # slots rounded up to a power of two
):
    row = tl.program_id(0).to(tl.int64)  # one (sequence, query head) per program
    b = row // (HKV * GROUP)
    h = row % (HKV * GROUP)
    r = (b * HKV + h // GROUP) * HEAD_CHUNKS + (h % GROUP) // HEADS
    first = _program_of(r * tiles_per_row, total_tiles, programs)
    count = _program_of((r + 1) * tiles_per_row - 1, total_tiles, programs) - first + 1
    offs_s = tl.arange(0, SLOTS_P)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_s = offs_s < count  # only the slots this row's programs wrote
    m = tl.load(Mws + row * slots + offs_s, mask=mask_s, other=float("-inf"))
    l = tl.load(Lws + row * slots + offs_s, mask=mask_s, other=0.0)
    acc = tl.load(Accws + (row * slots + offs_s[:, None]) * HEAD_DIM + offs_d[None, :], mask=mask_s[:, None],
                  other=0.0)
    w = tl.exp2(m - tl.max(m, axis=0))  # every written slot holds a token: the max is finite
    out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
    tl.store(Out + row * HEAD_DIM + offs_d, out.to(Out.dtype.element_ty))


@functools.lru_cache(maxsize=256)
def stream_programs(B: int, Hkv: int, group: int, T: int, cfg: Config, sms: int,
                    programs: int | None = None) -> tuple[int, int, int, int]:
    """``(programs, tiles_per_row, total_tiles, slots)`` of a launch: ``programs`` (default
    ``sms × cfg.programs_per_sm``, one wave) capped at the tiles, and the slots a row needs."""
    tiles_per_row = triton.cdiv(T, cfg.block_t)
    total = B * Hkv * triton.cdiv(group, heads_per_program(group, cfg.use_dot)) * tiles_per_row
    P = max(1, min(programs or sms * cfg.programs_per_sm, total))
    slots = max(((r + 1) * tiles_per_row * P - 1) // total - ((r * tiles_per_row + 1) * P - 1) // total + 1
                for r in range(total // tiles_per_row))
    return P, tiles_per_row, total, slots


def stream_launch(q, k, v, out, *, scale: float, cfg: Config, sms: int, programs: int | None = None,
                  biased: bool = False, asm: bool = True):
    """Launch the balanced kernel and its merge on validated inputs (q [B, Hq, D]; k, v QuantKV
    of data [B, Hkv, T, D], one length, tensor-core path); returns ``out`` [B, Hq, D]."""
    B, Hq, D = q.shape
    Hkv, T = k.data.shape[1], k.data.shape[2]
    group = Hq // Hkv
    heads = heads_per_program(group, cfg.use_dot)
    P, tiles_per_row, total, slots = stream_programs(B, Hkv, group, T, cfg, sms, programs)
    ws = workspace(q.device, B, Hq, slots, D)
    meta = dict(HKV=Hkv, GROUP=group, HEADS=heads, HEAD_CHUNKS=triton.cdiv(group, heads), HEAD_DIM=D)
    _stream_attend_kernel[(P,)](q, k.data, v.data, k.scale, v.scale, *ws, scale * LOG2E, T, tiles_per_row, total,
                                slots, **meta, BLOCK_T=cfg.block_t, NUM_STAGES=cfg.num_stages, BIASED=biased,
                                ASM=asm, num_warps=cfg.num_warps)
    _stream_merge_kernel[(B * Hq,)](*ws, out, tiles_per_row, total, P, slots, **meta,
                                    SLOTS_P=triton.next_power_of_2(slots), num_warps=4)
    return out


__all__ = ["stream_launch", "stream_programs"]
