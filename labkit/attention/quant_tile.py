"""One tile of the quantized kernel's tensor-core path: 8-bit K and V as fp16 operands of ``tl.dot``.

:mod:`labkit.attention.triton_quant`'s kernel calls :func:`dot_tile` once per ``[BLOCK_T, D]`` tile
on sm_80+: the tiles are converted to fp16 in registers, scored against the query rows, folded
into the online softmax and the weighted sum of V. How the 8-bit values become fp16 decides the
loop's speed more than the bytes do (see :func:`_to_f16`), so the conversions live here with it.

:func:`dot_tile_t` and :func:`attend_range_t` are the same tile with the tokens as the MMA's M
side and the query heads as N (``quant_flash_decode(..., heads_on_n=True)``): 580 instead of
900 SASS instructions a 32-token tile on sm_90 and 167 registers instead of 253 (Triton 3.6,
``scripts/quant_loop_sass.py``). sm_90's plan runs it for MHA and for GQA up to 8 query heads a
KV head, in one-warp programs (:func:`labkit.attention.triton_quant.quant_config`).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _i8_biased_f16(x):
    """An int8 tile as fp16 values ``x + 1152`` (bits 0x6400 | (x + 128)): no subtraction; the
    caller removes the bias from the dot product (1152·Σ of the other operand)."""
    return (x.to(tl.uint8, bitcast=True).to(tl.uint16) ^ 0x6480).to(tl.float16, bitcast=True)


@triton.jit
def _to_f16(x, ASM: tl.constexpr = False, PURE: tl.constexpr = True, BIAS: tl.constexpr = False):
    """An 8-bit tile as fp16 for ``tl.dot``.

    int8 by the magic-number trick: the byte's bits x + 128 placed under fp16's exponent of
    1024 (bits 0x6400 | byte) read 1024 + x + 128, and one subtraction leaves x, exactly. That
    is integer logic and a packed fp16 subtract, where a plain conversion (I2F) runs at a
    quarter of the rate. fp8 converts with the GPU's packed instruction.

    ``ASM`` (a GPU, not the interpreter) writes it in PTX, four bytes at a time: one XOR, two
    byte permutes, two packed subtracts. ``PURE=False`` marks that asm as having effects, so
    Triton cannot move the conversion past the tile's layout change. For V that matters: V is
    the second operand of p·V with its reduction dimension (tokens) strided in memory, and an
    8-bit operand laid out so must be gathered from shared memory a byte at a time (64 loads
    per thread per 64-token tile and the permutes that pack them: about a quarter of the loop's
    instructions on sm_90). Converted first, the tile changes layout as fp16, which
    ``ldmatrix.trans`` reads whole.

    ``BIAS`` (int8 only) skips the subtraction: the tile holds ``x + 1152`` exactly, and the
    caller takes ``1152 · Σ`` of the other operand off the product.
    """
    if ASM:
        if x.dtype == tl.int8 and BIAS:
            return tl.inline_asm_elementwise(
                asm="""{
                .reg .b32 t;
                xor.b32 t, $2, 0x80808080;
                prmt.b32 $0, t, 0x64646464, 0x5140;
                prmt.b32 $1, t, 0x64646464, 0x7362;
                }""",
                constraints="=r,=r,r", args=[x], dtype=tl.float16, is_pure=PURE, pack=4)
        elif x.dtype == tl.int8:
            return tl.inline_asm_elementwise(
                asm="""{
                .reg .b32 t, a, b, c;
                xor.b32 t, $2, 0x80808080;
                prmt.b32 a, t, 0x64646464, 0x5140;
                prmt.b32 b, t, 0x64646464, 0x7362;
                mov.b32 c, 0x64806480;
                sub.f16x2 $0, a, c;
                sub.f16x2 $1, b, c;
                }""",
                constraints="=r,=r,r", args=[x], dtype=tl.float16, is_pure=PURE, pack=4)
        else:
            return tl.inline_asm_elementwise(
                asm="""{
                .reg .b16 lo, hi;
                mov.b32 {lo, hi}, $2;
                cvt.rn.f16x2.e4m3x2 $0, lo;
                cvt.rn.f16x2.e4m3x2 $1, hi;
                }""",
                constraints="=r,=r,r", args=[x], dtype=tl.float16, is_pure=PURE, pack=4)
    elif x.dtype == tl.int8 and BIAS:
        return _i8_biased_f16(x)
    elif x.dtype == tl.int8:
        return _i8_biased_f16(x) - 1152.0
    else:
        return x.to(tl.float16)


@triton.jit
def dot_tile(q_op, q_bias, m, l, acc, kq, vq, ks, vs, mask_t, qk_scale,
             MASKED: tl.constexpr, BIASED: tl.constexpr, ASM: tl.constexpr):
    """One tile of the tensor-core path: scores, online softmax, p·V. kq, vq: [BLOCK_T, D]
    8-bit; ks, vs: [BLOCK_T] fp32 scales; ``mask_t`` ([BLOCK_T], read if MASKED) marks the
    valid tokens. Returns the updated ``(m, l, acc)``."""
    if BIASED:
        k = _i8_biased_f16(kq)
        v = _i8_biased_f16(vq)
        s = (tl.dot(q_op, tl.trans(k)) - q_bias) * (ks * qk_scale)[None, :]
    else:
        k = _to_f16(kq, ASM)
        v = _to_f16(vq, ASM, PURE=False)
        s = tl.dot(q_op, tl.trans(k)) * (ks * qk_scale)[None, :]  # the key scale after the dot
    if MASKED:
        s = tl.where(mask_t[None, :], s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=1, keep_dims=True))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(s - m_new)
    l = l * alpha + tl.sum(p, axis=1, keep_dims=True)
    pv = (p * vs[None, :]).to(tl.float16)  # the value scale folded into the weights
    if BIASED:
        acc = acc * alpha + (tl.dot(pv, v) - 1152.0 * tl.sum(pv.to(tl.float32), axis=1, keep_dims=True))
    else:
        acc = acc * alpha + tl.dot(pv, v)
    return m_new, l, acc


@triton.jit
def attend_range(q_op, q_bias, K, V, KS, VS, row0, n_tokens, qk_scale, HEADS: tl.constexpr,
                 HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr, NUM_STAGES: tl.constexpr, BIASED: tl.constexpr,
                 ASM: tl.constexpr):
    """The tensor-core path over ``n_tokens`` consecutive rows of a contiguous cache from row
    ``row0`` (int64; a row is one (token, KV head): D 8-bit values and one scale). Returns the
    online softmax's ``(m [HEADS, 1], l [HEADS, 1], acc [HEADS, D])`` of those tokens.

    The loop is bound by its instructions, not only its bytes: whole tiles run with no masks
    and with pointers that step a tile, then the partial last tile (if any) runs once, masked.
    """
    offs_t = tl.arange(0, BLOCK_T)
    kv_ptr = (row0 + offs_t)[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
    k_ptrs, v_ptrs = K + kv_ptr, V + kv_ptr
    ks_ptrs, vs_ptrs = KS + row0 + offs_t, VS + row0 + offs_t
    m = tl.full([HEADS, 1], float("-inf"), dtype=tl.float32)
    l = tl.zeros([HEADS, 1], dtype=tl.float32)
    acc = tl.zeros([HEADS, HEAD_DIM], dtype=tl.float32)
    full = tl.maximum(n_tokens, 0) // BLOCK_T  # an empty range (a split past the length) has none
    for _ in tl.range(0, full, num_stages=NUM_STAGES):
        m, l, acc = dot_tile(q_op, q_bias, m, l, acc, tl.load(k_ptrs), tl.load(v_ptrs), tl.load(ks_ptrs),
                             tl.load(vs_ptrs), offs_t, qk_scale, False, BIASED, ASM)  # offs_t: no mask read
        k_ptrs += BLOCK_T * HEAD_DIM
        v_ptrs += BLOCK_T * HEAD_DIM
        ks_ptrs += BLOCK_T
        vs_ptrs += BLOCK_T
    if full * BLOCK_T < n_tokens:
        mask_t = offs_t < n_tokens - full * BLOCK_T
        m, l, acc = dot_tile(q_op, q_bias, m, l, acc, tl.load(k_ptrs, mask=mask_t[:, None], other=0.0),
                             tl.load(v_ptrs, mask=mask_t[:, None], other=0.0),
                             tl.load(ks_ptrs, mask=mask_t, other=0.0), tl.load(vs_ptrs, mask=mask_t, other=0.0),
                             mask_t, qk_scale, True, BIASED, ASM)
    return m, l, acc


@triton.jit
def dot_tile_t(q_t, q_bias, m, l, acc, kq, vq, ks, vs, mask_t, qk_scale, MASKED: tl.constexpr, ASM: tl.constexpr):
    """:func:`dot_tile` with the tokens as the tensor cores' M side and the query heads as N:
    ``s = K·qᵀ`` and ``accᵀ += Vᵀ·p``. With one query head per KV head, ``q·Kᵀ`` fills one of
    the 16 rows an MMA computes; here a head pads N to 8, so a tile takes half the MMAs, and
    the accumulator ``[D, HEADS]`` half the registers (and the rescale half the multiplies).

    int8 keys convert without the subtraction (:func:`_to_f16`): every score then carries
    1152·Σ_d q, one number per head (q_bias, [1, HEADS]), taken off before the key scale.
    Values keep the subtraction. Their bias would be 1152 times the sum of the weights, to take
    off the accumulator at the end of a range, and that cancels: a weighted mean of values near
    zero is what remains of a sum near 1152, and fp32 keeps too few of its digits (relative
    errors of 0.4-2% at 2-4k tokens on an H100). q_t: [D, HEADS] fp16; m, l: [1, HEADS];
    acc: [D, HEADS] fp32. kq, vq, ks, vs, mask_t as :func:`dot_tile`'s. Returns the updated
    ``(m, l, acc)``.
    """
    if kq.dtype == tl.int8:
        s = tl.dot(_to_f16(kq, ASM, BIAS=True), q_t) - q_bias  # [BLOCK_T, HEADS]
    else:
        s = tl.dot(_to_f16(kq, ASM), q_t)
    s = s * (ks * qk_scale)[:, None]
    if MASKED:
        s = tl.where(mask_t[:, None], s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=0, keep_dims=True))
    if tl.max(m_new - m) > 0:  # rescale only when a running max moved: most tiles of a long range skip it
        alpha = tl.exp2(m - m_new)
        l = l * alpha
        acc = acc * alpha
    p = tl.exp2(s - m_new)
    l = l + tl.sum(p, axis=0, keep_dims=True)
    pv = (p * vs[:, None]).to(tl.float16)  # the value scale folded into the weights
    acc = acc + tl.dot(tl.trans(_to_f16(vq, ASM, PURE=False)), pv)
    return m_new, l, acc


@triton.jit
def attend_range_t(q_t, q_bias, K, V, KS, VS, row0, n_tokens, qk_scale, HEADS: tl.constexpr,
                   HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr, NUM_STAGES: tl.constexpr, ASM: tl.constexpr):
    """:func:`attend_range` over :func:`dot_tile_t`: returns ``(m [1, HEADS], l [1, HEADS],
    acc [D, HEADS])``. One scalar pointer per tensor steps a tile;
    the offsets within a tile stay the same every iteration, so the loop forms no per-element
    addresses of its own."""
    offs_t = tl.arange(0, BLOCK_T)
    offs = offs_t[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
    k_tile, v_tile = K + row0 * HEAD_DIM, V + row0 * HEAD_DIM
    ks_tile, vs_tile = KS + row0, VS + row0
    m = tl.full([1, HEADS], float("-inf"), dtype=tl.float32)
    l = tl.zeros([1, HEADS], dtype=tl.float32)
    acc = tl.zeros([HEAD_DIM, HEADS], dtype=tl.float32)
    full = tl.maximum(n_tokens, 0) // BLOCK_T
    for _ in tl.range(0, full, num_stages=NUM_STAGES):
        m, l, acc = dot_tile_t(q_t, q_bias, m, l, acc, tl.load(k_tile + offs), tl.load(v_tile + offs),
                               tl.load(ks_tile + offs_t), tl.load(vs_tile + offs_t), offs_t, qk_scale, False, ASM)
        k_tile += BLOCK_T * HEAD_DIM
        v_tile += BLOCK_T * HEAD_DIM
        ks_tile += BLOCK_T
        vs_tile += BLOCK_T
    if full * BLOCK_T < n_tokens:
        mask_t = offs_t < n_tokens - full * BLOCK_T
        m, l, acc = dot_tile_t(q_t, q_bias, m, l, acc, tl.load(k_tile + offs, mask=mask_t[:, None], other=0.0),
                               tl.load(v_tile + offs, mask=mask_t[:, None], other=0.0),
                               tl.load(ks_tile + offs_t, mask=mask_t, other=0.0),
                               tl.load(vs_tile + offs_t, mask=mask_t, other=0.0), mask_t, qk_scale, True, ASM)
    return m, l, acc


__all__ = ["attend_range", "attend_range_t", "dot_tile", "dot_tile_t"]
