"""Quantize-on-write: rotate the new keys by RoPE, quantize keys and values to 8 bits, write
data and scales into the cache — one launch (notebook 04's fused write, one step further).

A token's key and value are quantized once, when they are written, each row of ``D`` values
(one token, one KV head) by its own absmax (:mod:`labkit.kvcache.quant`). The row is already in
registers for the rotation, so its absmax, its scale and the rounding cost no extra memory
traffic; the cache receives 8-bit data and one fp32 scale per row.

The cache is addressed as ``cache[row, head, slot, :]`` (its scale ``scale[row, head, slot]``),
so one kernel serves the contiguous cache ``[B, Hkv, T, D]`` (row = sequence, slot = position)
and a paged pool ``[num_blocks, Hkv, BS, D]`` (row = block, slot = offset in the block).
"""

from __future__ import annotations

import torch

import labkit  # noqa: F401  (decides the mode before triton is imported)
import triton
import triton.language as tl

from labkit.attention.validate import check_tensor, supported_dtypes
from labkit.kvcache.quant import SCALE_DTYPE, QuantKV, get_format
from labkit.rope.write import INDEX_DTYPES


@triton.jit
def _quantize_rows(x1, x2, QMAX: tl.constexpr, IS_INT: tl.constexpr):
    """Symmetric absmax quantization of [H, HALF] halves of rows: (q1, q2, scale [H])."""
    amax = tl.maximum(tl.max(tl.abs(x1), axis=1), tl.max(tl.abs(x2), axis=1))
    inv = tl.where(amax > 0, QMAX / tl.where(amax > 0, amax, 1.0), 0.0)
    y1 = x1 * inv[:, None]
    y2 = x2 * inv[:, None]
    if IS_INT:  # round half away from zero, then clamp (a rounding can never pass QMAX, but be sure)
        y1 = tl.where(y1 >= 0, tl.floor(y1 + 0.5), -tl.floor(-y1 + 0.5))
        y2 = tl.where(y2 >= 0, tl.floor(y2 + 0.5), -tl.floor(-y2 + 0.5))
    y1 = tl.minimum(tl.maximum(y1, -QMAX), QMAX)
    y2 = tl.minimum(tl.maximum(y2, -QMAX), QMAX)
    return y1, y2, amax / QMAX


@triton.jit
def quant_write_kernel(
    k_new_ptr, v_new_ptr,  # [N, H, D] new keys and values
    k_ptr, v_ptr,  # 8-bit caches: element [row, head, slot, d] at row*s_r + head*s_h + slot*s_s + d
    ks_ptr, vs_ptr,  # fp32 scales: [row, head, slot] at row*ss_r + head*ss_h + slot*ss_s
    rows_ptr, slots_ptr, pos_ptr,  # [N] cache row, slot, and RoPE position of token n
    cos_ptr, sin_ptr,  # [max_len, D/2] RoPE tables (ROPE only)
    H, D, HALF,
    num_rows, num_slots, max_pos,
    s_kn, s_kh, s_vn, s_vh,
    s_r, s_h, s_s,  # data strides (K and V alike)
    ss_r, ss_h, ss_s,  # scale strides (K and V alike)
    s_tab,
    ROPE: tl.constexpr,
    QMAX: tl.constexpr,  # 127 for int8, 448 for fp8 e4m3
    IS_INT: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    n = tl.program_id(0)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_HALF)
    row = tl.load(rows_ptr + n).to(tl.int64)
    slot = tl.load(slots_ptr + n).to(tl.int64)
    # The bounds as [BLOCK_H] tensors, not scalars: Triton's interpreter rejects a mask built
    # from scalar comparisons (it comes out int32), and the compiled kernel is the same.
    row_h = tl.zeros([BLOCK_H], dtype=tl.int64) + row
    slot_h = tl.zeros([BLOCK_H], dtype=tl.int64) + slot
    head_ok = (heads < H) & (row_h >= 0) & (row_h < num_rows) & (slot_h >= 0) & (slot_h < num_slots)

    # The key's two halves in fp32, rotated at the token's position.
    in1 = (heads < H)[:, None] & (cols[None, :] < HALF)  # the new token's own elements
    in2 = (heads < H)[:, None] & (cols[None, :] < D - HALF)
    k_src = k_new_ptr + n * s_kn + heads[:, None] * s_kh + cols[None, :]
    k1 = tl.load(k_src, mask=in1, other=0.0).to(tl.float32)
    k2 = tl.load(k_src + HALF, mask=in2, other=0.0).to(tl.float32)
    if ROPE:
        pos = tl.load(pos_ptr + n).to(tl.int64)
        pos_c = tl.zeros([BLOCK_HALF], dtype=tl.int64) + pos
        tab_ok = (cols < HALF) & (pos_c >= 0) & (pos_c < max_pos)
        c = tl.load(cos_ptr + pos * s_tab + cols, mask=tab_ok, other=0.0).to(tl.float32)[None, :]
        s = tl.load(sin_ptr + pos * s_tab + cols, mask=tab_ok, other=0.0).to(tl.float32)[None, :]
        k1, k2 = k1 * c - k2 * s, k2 * c + k1 * s
        pos_h = tl.zeros([BLOCK_H], dtype=tl.int64) + pos
        head_ok = head_ok & (pos_h >= 0) & (pos_h < max_pos)
    mask1 = head_ok[:, None] & (cols[None, :] < HALF)
    mask2 = head_ok[:, None] & (cols[None, :] < D - HALF)
    v_src = v_new_ptr + n * s_vn + heads[:, None] * s_vh + cols[None, :]
    v1 = tl.load(v_src, mask=in1, other=0.0).to(tl.float32)
    v2 = tl.load(v_src + HALF, mask=in2, other=0.0).to(tl.float32)

    # Quantize each head's row by its absmax (masked columns are 0: they never raise it).
    kq1, kq2, k_scale = _quantize_rows(k1, k2, QMAX, IS_INT)
    vq1, vq2, v_scale = _quantize_rows(v1, v2, QMAX, IS_INT)

    dst = row * s_r + heads[:, None] * s_h + slot * s_s + cols[None, :]
    tl.store(k_ptr + dst, kq1.to(k_ptr.dtype.element_ty), mask=mask1)
    tl.store(k_ptr + dst + HALF, kq2.to(k_ptr.dtype.element_ty), mask=mask2)
    tl.store(v_ptr + dst, vq1.to(v_ptr.dtype.element_ty), mask=mask1)
    tl.store(v_ptr + dst + HALF, vq2.to(v_ptr.dtype.element_ty), mask=mask2)
    sdst = row * ss_r + heads * ss_h + slot * ss_s
    tl.store(ks_ptr + sdst, k_scale, mask=head_ok)
    tl.store(vs_ptr + sdst, v_scale, mask=head_ok)


def quant_write(k_new: torch.Tensor, v_new: torch.Tensor, k_cache: QuantKV, v_cache: QuantKV, rows: torch.Tensor,
                slots: torch.Tensor, rope=None, *, check_indices: bool = True) -> None:
    """Write N new tokens (keys rotated by RoPE) into an 8-bit cache, quantized, in one launch.

    k_new, v_new: [N, H, D] fp16/fp32 (bf16 where the GPU has it), head dim contiguous, D even
    when ``rope`` is given. k_cache, v_cache: :class:`~labkit.kvcache.quant.QuantKV` of one
    format, data [R, H, S, D] and scales [R, H, S], written at ``[rows[n], :, slots[n]]``.
    rows, slots: [N] int32/int64. rope: ``(cos, sin, positions)`` as
    :func:`labkit.rope.write.write_kv_rope` takes it, or ``None``. ``check_indices``
    validates index values (one device sync); the kernel never writes outside the cache anyway.
    """
    for name, t in (("k_new", k_new), ("v_new", v_new)):
        check_tensor(name, t, ndim=3, dtypes=supported_dtypes(), contiguous=False)
        if t.shape[-1] > 1 and t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last (head) dimension")
    if v_new.shape != k_new.shape:
        raise ValueError(f"v_new must have k_new's shape {tuple(k_new.shape)}, got {tuple(v_new.shape)}")
    if not isinstance(k_cache, QuantKV) or not isinstance(v_cache, QuantKV):
        raise TypeError("k_cache and v_cache must be labkit.kvcache.quant.QuantKV")
    if k_cache.fmt != v_cache.fmt or k_cache.data.shape != v_cache.data.shape:
        raise ValueError("k_cache and v_cache must share one format and shape")
    if k_cache.data.stride() != v_cache.data.stride() or k_cache.scale.stride() != v_cache.scale.stride():
        raise ValueError("k_cache and v_cache must share their strides")
    if k_cache.data.stride(-1) != 1:
        raise ValueError("the cache's last (head) dimension must be contiguous")
    N, H, D = k_new.shape
    R, Hc, S, Dc = k_cache.data.shape
    if (Hc, Dc) != (H, D):
        raise ValueError(f"the cache [R, H, S, D] = {tuple(k_cache.data.shape)} does not fit k_new {tuple(k_new.shape)}")
    for name, t in (("rows", rows), ("slots", slots)):
        check_tensor(name, t, ndim=1, dtypes=INDEX_DTYPES, device=k_new.device)
        if t.shape[0] != N:
            raise ValueError(f"{name} must have shape [{N}]")
    bounds = [("rows", rows, R), ("slots", slots, S)]
    if rope is not None:
        cos, sin, positions = rope
        if D % 2:
            raise ValueError(f"RoPE needs an even head dim, got {D}")
        for name, t in (("cos", cos), ("sin", sin)):
            check_tensor(name, t, ndim=2, dtypes=(torch.float32,) + supported_dtypes(), contiguous=False)
            if tuple(t.shape[1:]) != (D // 2,) or t.stride(1) != 1:
                raise ValueError(f"{name} must have shape [max_len, {D // 2}] with contiguous rows")
        check_tensor("positions", positions, ndim=1, dtypes=INDEX_DTYPES, device=k_new.device)
        bounds.append(("positions", positions, cos.shape[0]))
    if check_indices and N:
        for name, t, bound in bounds:
            lo, hi = int(t.min()), int(t.max())
            if lo < 0 or hi >= bound:
                raise ValueError(f"{name} must lie in [0, {bound}), got values {lo} … {hi}")
    if N == 0:
        return
    f = get_format(k_cache.fmt)
    half = (D + 1) // 2
    block_half = triton.next_power_of_2(half)
    block_h = min(triton.next_power_of_2(H), max(1, 4096 // block_half))
    if rope is None:
        cos = sin = positions = rows
        max_pos, s_tab = 0, 0
    else:
        cos, sin, positions = rope
        max_pos, s_tab = cos.shape[0], cos.stride(0)
    kd, ks = k_cache.data, k_cache.scale
    quant_write_kernel[(N, triton.cdiv(H, block_h))](
        k_new, v_new, kd, v_cache.data, ks, v_cache.scale, rows, slots, positions, cos, sin,
        H, D, half, R, S, max_pos,
        k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1),
        kd.stride(0), kd.stride(1), kd.stride(2), ks.stride(0), ks.stride(1), ks.stride(2),
        s_tab,
        ROPE=rope is not None, QMAX=f.qmax, IS_INT=f.dtype == torch.int8, BLOCK_H=block_h, BLOCK_HALF=block_half,
        num_warps=4 if block_h * block_half >= 2048 else 2,
    )


def quant_write_decode(k_new, v_new, k_cache: QuantKV, v_cache: QuantKV, positions, rope_tables=None, *,
                       check_indices: bool = True) -> None:
    """A decode step's write into a contiguous 8-bit cache: sequence b's token goes to slot positions[b]."""
    rows = torch.arange(positions.shape[0], device=positions.device, dtype=positions.dtype)
    rope = None if rope_tables is None else (rope_tables[0], rope_tables[1], positions)
    quant_write(k_new, v_new, k_cache, v_cache, rows, positions, rope, check_indices=check_indices)


def reference_quant_write(k_new, v_new, k_cache: QuantKV, v_cache: QuantKV, rows, slots, rope=None) -> None:
    """The same write in PyTorch (:func:`labkit.kvcache.quant.quantize`), for tests."""
    from labkit.kvcache.quant import quantize
    from labkit.rope import apply_rope

    k = k_new.to(torch.float32)
    if rope is not None:
        cos, sin, positions = rope
        k = apply_rope(k, positions.long()[:, None], cos.float(), sin.float())
    kq, vq = quantize(k, k_cache.fmt), quantize(v_new, v_cache.fmt)
    r, s = rows.long(), slots.long()
    k_cache.data[r, :, s] = kq.data
    k_cache.scale[r, :, s] = kq.scale
    v_cache.data[r, :, s] = vq.data
    v_cache.scale[r, :, s] = vq.scale


__all__ = ["quant_write", "quant_write_decode", "quant_write_kernel", "reference_quant_write"]
