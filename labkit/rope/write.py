"""Rotate the new tokens' keys by RoPE and write keys and values into the KV cache: one launch.

Production engines keep *rotated* keys in the cache: a key is rotated once, when it is
written, at its own position, and never again. Done as separate PyTorch ops that is a
gather of the cos/sin rows, about ten elementwise kernels for the rotation and two scatters
into the cache; here it is one Triton kernel that reads each new key and value once and
writes them straight to their cache slots.

The cache is addressed through its strides as ``cache[row, head, slot, :]``, so one kernel
serves every layout:

* a contiguous cache ``[B, Hkv, T, D]``: row = sequence, slot = the token's position;
* a paged pool ``[num_blocks, Hkv, block_size, D]``: row = block, slot = offset in the block.

Each token n carries its own row, slot and position, so a batch of sequences at different
lengths is written in the same launch. Keys and values share one set of strides (the wrapper
requires it), so the kernel takes a short signature: nine pointers and four small tuples.
"""

from __future__ import annotations

import torch

import labkit  # noqa: F401  (decides the mode before triton is imported)
import triton
import triton.language as tl

from labkit.attention.validate import check_tensor, supported_dtypes

INDEX_DTYPES = (torch.int32, torch.int64)


@triton.jit
def write_kv_rope_kernel(
    k_new_ptr, v_new_ptr,  # [N, H, D]: the new tokens' keys and values (same strides, head dim contiguous)
    k_cache_ptr, v_cache_ptr,  # [rows, H, slots, D]: the caches (same strides, head dim contiguous)
    rows_ptr, slots_ptr,  # [N] int: token n goes to cache[rows[n], :, slots[n], :]
    pos_ptr,  # [N] int: token n's position, the row of the tables it is rotated by (ROPE only)
    cos_ptr, sin_ptr,  # [max_pos, HALF] float32, contiguous: the RoPE tables (ROPE only)
    sizes,  # (H, D, HALF): heads; head dim; first-half width ceil(D/2) (= D/2 whenever ROPE)
    limits,  # (num_rows, num_slots, max_pos): a token outside them is skipped, never written
    new_strides,  # (token, head) strides of k_new and v_new
    cache_strides,  # (row, head, slot) strides of k_cache and v_cache
    ROPE: tl.constexpr,  # rotate the keys (True) or copy them as they are (False)
    BLOCK_H: tl.constexpr,  # heads per program (a power of two)
    BLOCK_HALF: tl.constexpr,  # power of two >= HALF: one tile holds a whole half of every head
):
    # One program writes token n's key and value for BLOCK_H heads. The head vector is
    # handled as its two halves, [0, HALF) and [HALF, D): rotate-half pairs column i with
    # column i + HALF, so each half is one [BLOCK_H, BLOCK_HALF] tile.
    H, D, HALF = sizes
    num_rows, num_slots, max_pos = limits
    s_n, s_h = new_strides  # element [n, head, d] of k_new (and v_new) at n*s_n + head*s_h + d
    s_r, s_ch, s_s = cache_strides  # element [row, head, slot, d] at row*s_r + head*s_ch + slot*s_s + d
    n = tl.program_id(0)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_HALF)

    # Step 1: where the token goes. 64-bit offsets: a paged pool can exceed 2^31 elements.
    row = tl.load(rows_ptr + n).to(tl.int64)
    slot = tl.load(slots_ptr + n).to(tl.int64)
    inside = (row >= 0) & (row < num_rows) & (slot >= 0) & (slot < num_slots)
    head_ok = heads[:, None] < H
    mask1 = head_ok & (cols[None, :] < HALF) & inside
    mask2 = head_ok & (cols[None, :] < D - HALF) & inside
    # k and v share their strides: one source and one destination offset serve both.
    src = n * s_n + heads[:, None] * s_h + cols[None, :]
    dst = row * s_r + heads[:, None] * s_ch + slot * s_s + cols[None, :]

    # Step 2: load both halves of the key, in float32.
    k1 = tl.load(k_new_ptr + src, mask=mask1, other=0.0).to(tl.float32)
    k2 = tl.load(k_new_ptr + src + HALF, mask=mask2, other=0.0).to(tl.float32)

    # Step 3: rotate each pair (k1[i], k2[i]) by the angle of this token's position.
    if ROPE:
        pos = tl.load(pos_ptr + n).to(tl.int64)
        pos_ok = (pos >= 0) & (pos < max_pos)
        # The tables are contiguous: row pos starts at pos * HALF.
        c = tl.load(cos_ptr + pos * HALF + cols, mask=(cols < HALF) & pos_ok, other=0.0).to(tl.float32)[None, :]
        s = tl.load(sin_ptr + pos * HALF + cols, mask=(cols < HALF) & pos_ok, other=0.0).to(tl.float32)[None, :]
        k1, k2 = k1 * c - k2 * s, k2 * c + k1 * s
        mask1 = mask1 & pos_ok
        mask2 = mask2 & pos_ok

    # Step 4: store the key at cache[row, head, slot, :].
    tl.store(k_cache_ptr + dst, k1.to(k_cache_ptr.dtype.element_ty), mask=mask1)
    tl.store(k_cache_ptr + dst + HALF, k2.to(k_cache_ptr.dtype.element_ty), mask=mask2)

    # Step 5: the value is copied unchanged (RoPE rotates only queries and keys).
    tl.store(v_cache_ptr + dst, tl.load(v_new_ptr + src, mask=mask1, other=0.0), mask=mask1)
    tl.store(v_cache_ptr + dst + HALF, tl.load(v_new_ptr + src + HALF, mask=mask2, other=0.0), mask=mask2)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have a contiguous last (head) dimension; got strides {t.stride()}")


def _check_same_strides(name: str, t: torch.Tensor, like: str, ref: torch.Tensor, dims: str) -> None:
    # The kernel addresses both tensors with one set of strides. A dimension of size 1 is only
    # ever indexed at 0, so its stride (which torch leaves arbitrary) need not match.
    if any(a != b for a, b, size in zip(t.stride(), ref.stride(), t.shape) if size > 1):
        raise ValueError(f"{name} must have {like}'s strides {ref.stride()} ({dims}): the kernel addresses "
                         f"both with one set; got {t.stride()}. Make both contiguous, or slice both from one "
                         f"tensor the same way")


def validate_write(k_new, v_new, k_cache, v_cache, rows, slots, rope=None, *, check_indices: bool = True) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument unless the inputs of :func:`write_kv_rope` fit.

    With ``check_indices`` the index values are checked too (rows, slots and positions in
    range), which reads them back to the host: one device sync.
    """
    dtypes = supported_dtypes()
    for name, t, ndim in (("k_new", k_new, 3), ("v_new", v_new, 3), ("k_cache", k_cache, 4), ("v_cache", v_cache, 4)):
        check_tensor(name, t, ndim=ndim, dtypes=dtypes, contiguous=False)
        _check_last_dim_contiguous(name, t)
    device = k_new.device
    N, H, D = k_new.shape
    if v_new.shape != k_new.shape:
        raise ValueError(f"v_new must have k_new's shape {tuple(k_new.shape)} [N, H, D], got {tuple(v_new.shape)}")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"v_cache must have k_cache's shape {tuple(k_cache.shape)}, got {tuple(v_cache.shape)}")
    if k_cache.shape[1] != H or k_cache.shape[3] != D:
        raise ValueError(f"k_cache has shape {tuple(k_cache.shape)} [rows, heads, slots, D]; expected heads {H} "
                         f"and head dim {D} to match k_new {tuple(k_new.shape)}")
    _check_same_strides("v_new", v_new, "k_new", k_new, "token, head, d")
    _check_same_strides("v_cache", v_cache, "k_cache", k_cache, "row, head, slot, d")
    for name, t in (("v_new", v_new), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype != k_new.dtype:
            raise TypeError(f"{name} has dtype {_name(t.dtype)}; expected k_new's dtype {_name(k_new.dtype)}")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device}; expected k_new's device {device}")
    for name, t in (("rows", rows), ("slots", slots)):
        check_tensor(name, t, ndim=1, dtypes=INDEX_DTYPES, device=device)
        if t.shape[0] != N:
            raise ValueError(f"{name} must have shape [{N}] (one per new token), got {tuple(t.shape)}")
    bounds = [("rows", rows, k_cache.shape[0]), ("slots", slots, k_cache.shape[2])]
    if rope is not None:
        if not isinstance(rope, (tuple, list)) or len(rope) != 3:
            raise TypeError("rope must be a tuple (cos, sin, positions) or None")
        cos, sin, positions = rope
        if D % 2:
            raise ValueError(f"k_new has head dim {D}; RoPE needs an even head dim (pairs of columns rotate)")
        for name, t in (("cos", cos), ("sin", sin)):
            check_tensor(name, t, ndim=2, dtypes=(torch.float32,) + dtypes, device=device, contiguous=False)
            if tuple(t.shape[1:]) != (D // 2,):
                raise ValueError(f"{name} must have shape [max_len, {D // 2}] (head_dim // 2), got shape "
                                 f"{tuple(t.shape)}")
            if not t.is_contiguous():  # the kernel finds row p at p * D/2
                raise ValueError(f"{name} must be contiguous (row p at p * {D // 2}), got strides {t.stride()}: "
                                 f"pass {name}.contiguous()")
        if cos.shape != sin.shape:
            raise ValueError(f"cos and sin must have the same shape, got {tuple(cos.shape)} and {tuple(sin.shape)}")
        check_tensor("positions", positions, ndim=1, dtypes=INDEX_DTYPES, device=device)
        if positions.shape[0] != N:
            raise ValueError(f"positions must have shape [{N}] (one per new token), got {tuple(positions.shape)}")
        bounds.append(("positions", positions, cos.shape[0]))
    if check_indices and N:
        for name, t, bound in bounds:
            lo, hi = int(t.min()), int(t.max())
            if lo < 0 or hi >= bound:
                raise ValueError(f"{name} must lie in [0, {bound}), got values {lo} … {hi}")


def write_kv_rope(k_new: torch.Tensor, v_new: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  rows: torch.Tensor, slots: torch.Tensor, rope=None, *, check_indices: bool = True,
                  block_h: int | None = None, kernel=None) -> None:
    """Write N new tokens' keys (rotated by RoPE) and values into a cache, in place, in one launch.

    k_new, v_new: [N, H, D] fp16/fp32 (bf16 where the GPU has it), head dim contiguous, with the
    same strides (e.g. both contiguous, or both sliced from one qkv tensor).
    k_cache, v_cache: [R, H, S, D] in the same dtype, with the same strides, addressed as
    ``cache[rows[n], :, slots[n], :]`` (any view whose last dim is contiguous: a layer of a
    bigger cache works). rows, slots: [N] int32/int64. rope: ``(cos, sin, positions)`` with
    cos, sin [max_len, D/2] contiguous (float32) and positions [N] int, the position token n is
    rotated to; ``None`` writes the keys unrotated. ``check_indices`` validates index values
    (one device sync; turn it off in timed loops — the kernel still never writes outside the
    cache). ``block_h``: heads per program (default: as many as fill a ~4K-element tile).
    ``kernel`` (default :func:`write_kv_rope_kernel`) may be any kernel with the same signature.
    """
    validate_write(k_new, v_new, k_cache, v_cache, rows, slots, rope, check_indices=check_indices)
    N, H, D = k_new.shape
    if N == 0:
        return
    half = (D + 1) // 2
    block_half = triton.next_power_of_2(half)
    # Enough heads per program for ~4K elements a tile: few programs, each moving a few KB.
    block_h = block_h or min(triton.next_power_of_2(H), max(1, 4096 // block_half))
    if rope is None:
        cos = sin = positions = rows  # never read: ROPE=False compiles the loads away
        max_pos = 0
    else:
        cos, sin, positions = rope
        max_pos = cos.shape[0]
    grid = (N, triton.cdiv(H, block_h))
    (kernel or write_kv_rope_kernel)[grid](
        k_new, v_new, k_cache, v_cache, rows, slots, positions, cos, sin,
        (H, D, half), (k_cache.shape[0], k_cache.shape[2], max_pos),
        (k_new.stride(0), k_new.stride(1)), (k_cache.stride(0), k_cache.stride(1), k_cache.stride(2)),
        ROPE=rope is not None, BLOCK_H=block_h, BLOCK_HALF=block_half,
        num_warps=4 if block_h * block_half >= 2048 else 2,
    )


def write_decode_kv(k_new: torch.Tensor, v_new: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    positions: torch.Tensor, rope_tables=None, *, check_indices: bool = True) -> None:
    """A decode step's write into a contiguous cache: token of sequence b goes to slot positions[b].

    k_new, v_new: [B, Hkv, D]; k_cache, v_cache: [B, Hkv, T, D]; positions: [B] int, each < T.
    rope_tables: ``(cos, sin)`` to rotate the keys at ``positions``, or ``None``.
    """
    check_tensor("positions", positions, ndim=1, dtypes=INDEX_DTYPES, device=k_new.device)
    rows = torch.arange(positions.shape[0], device=positions.device, dtype=positions.dtype)
    rope = None if rope_tables is None else (rope_tables[0], rope_tables[1], positions)
    write_kv_rope(k_new, v_new, k_cache, v_cache, rows, positions, rope, check_indices=check_indices)


__all__ = ["validate_write", "write_decode_kv", "write_kv_rope", "write_kv_rope_kernel"]
