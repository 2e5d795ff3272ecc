"""RoPE as one Triton kernel: rotate-half on a tile of heads, cos/sin read from the tables.

This is the rotation every fused kernel in notebook 04 performs inside its loads (the KV
write of :mod:`labkit.rope.write`, the query load of
:func:`labkit.attention.triton_decode.flash_decode`), shown on its own: one program per token
loads both halves of every head as two ``[BLOCK_H, BLOCK_HALF]`` tiles, the token's cos and
sin rows once, and writes the rotated halves.
"""

from __future__ import annotations

import torch

import labkit  # noqa: F401  (decides the mode before triton is imported)
import triton
import triton.language as tl

from labkit.attention.validate import check_out, check_tensor, supported_dtypes


@triton.jit
def rope_kernel(
    x_ptr, out_ptr,  # [N, H, D] contiguous: the vectors to rotate and where the result goes
    pos_ptr,  # [N] int: the position of token n (a row of the tables)
    cos_ptr, sin_ptr,  # [max_len, HALF] float32 contiguous: cos(pθ_i) and sin(pθ_i)
    H, HALF,  # heads per token; head_dim // 2
    BLOCK_H: tl.constexpr,  # heads per program (a power of two)
    BLOCK_HALF: tl.constexpr,  # power of two >= HALF
):
    n = tl.program_id(0)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_HALF)
    mask = (heads[:, None] < H) & (cols[None, :] < HALF)

    # Step 1: the two halves of each head: x1 = x[:HALF], x2 = x[HALF:].
    offs = (n * H + heads[:, None]).to(tl.int64) * (2 * HALF) + cols[None, :]
    x1 = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + offs + HALF, mask=mask, other=0.0).to(tl.float32)

    # Step 2: this token's cos and sin rows, shared by every head.
    pos = tl.load(pos_ptr + n).to(tl.int64)
    c = tl.load(cos_ptr + pos * HALF + cols, mask=cols < HALF, other=0.0)[None, :]
    s = tl.load(sin_ptr + pos * HALF + cols, mask=cols < HALF, other=0.0)[None, :]

    # Step 3: rotate each pair (x1[i], x2[i]) and store both halves.
    tl.store(out_ptr + offs, (x1 * c - x2 * s).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + offs + HALF, (x2 * c + x1 * s).to(out_ptr.dtype.element_ty), mask=mask)


def rope_triton(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                out: torch.Tensor | None = None, block_h: int | None = None, kernel=None) -> torch.Tensor:
    """Rotate ``x`` [N, H, D] (token n at ``positions[n]``) with one launch of ``kernel``.

    x: contiguous fp16/fp32 (bf16 where the GPU has it), D even; positions: [N] int32/int64,
    each in [0, max_len); cos, sin: [max_len, D/2] float32 contiguous. ``out``: optional
    [N, H, D] of x's dtype (may be ``x`` itself: each program reads its tile before writing
    it). ``kernel`` (default :func:`rope_kernel`) may be any kernel with the same signature.
    Returns ``out``.
    """
    check_tensor("x", x, ndim=3, dtypes=supported_dtypes())
    N, H, D = x.shape
    if D % 2:
        raise ValueError(f"x has head dim {D}; RoPE needs an even head dim (pairs of columns rotate)")
    check_tensor("positions", positions, ndim=1, dtypes=(torch.int32, torch.int64), device=x.device)
    if positions.shape[0] != N:
        raise ValueError(f"positions must have shape [{N}] (one per token of x), got {tuple(positions.shape)}")
    for name, t in (("cos", cos), ("sin", sin)):
        check_tensor(name, t, ndim=2, dtypes=(torch.float32,), device=x.device)
        if t.shape[1] != D // 2:
            raise ValueError(f"{name} must have shape [max_len, {D // 2}] (head_dim // 2), got {tuple(t.shape)}")
    if cos.shape != sin.shape:
        raise ValueError(f"cos and sin must have the same shape, got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if N and (int(positions.min()) < 0 or int(positions.max()) >= cos.shape[0]):
        raise ValueError(f"positions must lie in [0, {cos.shape[0]}) (the tables' rows), got values "
                         f"{int(positions.min())} … {int(positions.max())}")
    out = check_out(out, x, "x")
    if N == 0:
        return out
    block_half = triton.next_power_of_2(D // 2)
    block_h = block_h or min(triton.next_power_of_2(H), max(1, 4096 // block_half))
    (kernel or rope_kernel)[(N, triton.cdiv(H, block_h))](
        x, out, positions, cos, sin, H, D // 2, BLOCK_H=block_h, BLOCK_HALF=block_half)
    return out


__all__ = ["rope_kernel", "rope_triton"]
