"""Rotary position embedding (RoPE), rotate-half convention (Llama, GPT-NeoX).

A head vector x of even size D is split into halves x1 = x[:D/2], x2 = x[D/2:]; position p
rotates each pair (x1[i], x2[i]) by the angle p·θ_i, θ_i = base^(-2i/D):

    x'[i]       = x1[i]·cos(pθ_i) − x2[i]·sin(pθ_i)
    x'[i + D/2] = x2[i]·cos(pθ_i) + x1[i]·sin(pθ_i)

Because a rotation by pθ followed by the inverse of one by sθ is a rotation by (p − s)θ, the
score ⟨R(p)q, R(s)k⟩ depends only on the distance p − s: that is the whole point of RoPE, and
why a cache can hold keys already rotated at their own positions.

The GPT-J ("interleaved") convention pairs x[2i] with x[2i+1] instead; the two give the same
attention scores after a fixed permutation of the head dimensions
(:func:`interleaved_permutation`), but weights trained with one must be used with the same one.

Kernels read the precomputed tables ``cos, sin: [max_len, D/2] float32`` (see :func:`rope_tables`).
:func:`apply_rope` is the reference (validated, float32 or float64 arithmetic);
:func:`rope_ops` is the same rotation as a model's PyTorch code runs it: separate tensor ops, in
the input's dtype, no checks and no host synchronisation — the unfused baseline.
"""

from __future__ import annotations

import torch


def rope_tables(max_len: int, head_dim: int, *, base: float = 10000.0, device=None,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each [max_len, head_dim // 2] (float32 by default), computed in float64."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    angles = rope_angles(max_len, head_dim, base=base)
    return angles.cos().to(device=device, dtype=dtype), angles.sin().to(device=device, dtype=dtype)


def rope_angles(max_len: int, head_dim: int, *, base: float = 10000.0) -> torch.Tensor:
    """The rotation angles p·θ_i, float64 [max_len, head_dim // 2], θ_i = base^(-2i/head_dim)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    return torch.arange(max_len, dtype=torch.float64)[:, None] * inv_freq[None, :]


def _check_rope_args(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> int:
    D = x.shape[-1]
    if D % 2:
        raise ValueError(f"the last dimension of x must be even for RoPE, got {D}")
    if cos.shape != sin.shape:
        raise ValueError(f"cos and sin must have the same shape, got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if cos.dim() != 2 or cos.shape[-1] != D // 2:
        raise ValueError(f"cos/sin tables have shape {tuple(cos.shape)}, expected [max_len, head_dim // 2 = {D // 2}]")
    return D


def apply_rope(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [..., D] at integer ``positions`` (broadcastable to x.shape[:-1]) — the reference.

    Computes in float32 (float64 if x is float64) and returns x's dtype. For a float64
    reference of a kernel that reads float32 tables, pass ``x.double()`` and the same tables:
    they are converted, not recomputed, so both see the same table values.
    """
    D = _check_rope_args(x, cos, sin)
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    positions = positions.long().to(cos.device)
    if positions.numel() and (int(positions.max()) >= cos.shape[0] or int(positions.min()) < 0):
        raise ValueError(f"positions must lie in [0, {cos.shape[0]}) (the tables' rows); got "
                         f"{int(positions.min())} … {int(positions.max())}")
    c = cos[positions].to(x.device, work)
    s = sin[positions].to(x.device, work)
    x1, x2 = x[..., : D // 2].to(work), x[..., D // 2:].to(work)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def rope_ops(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The unfused RoPE a model's PyTorch code runs: gather, cast, multiply, add, concatenate.

    x: [..., D]; positions: integer, broadcastable to x.shape[:-1], on x's device; cos, sin:
    [max_len, D/2] on x's device. Arithmetic in x's dtype (as Hugging Face's Llama does), about
    ten kernel launches, no validation and no host sync (positions are trusted).
    """
    half = x.shape[-1] // 2
    c = cos[positions].to(x.dtype)
    s = sin[positions].to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def interleaved_permutation(head_dim: int) -> torch.Tensor:
    """Index ``perm`` [head_dim] mapping the GPT-J (interleaved) layout to rotate-half.

    Rotating ``x[..., perm]`` rotate-half style equals rotating ``x`` GPT-J style (pairs
    (2i, 2i+1)) and then taking ``[..., perm]``. Apply it to the rows of a checkpoint's q and
    k projection weights to run GPT-J-style weights with rotate-half kernels.
    """
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def apply_rope_interleaved(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                           sin: torch.Tensor) -> torch.Tensor:
    """The GPT-J convention (pairs x[2i], x[2i+1]), for comparison only; labkit's kernels use rotate-half."""
    _check_rope_args(x, cos, sin)
    perm = interleaved_permutation(x.shape[-1]).to(x.device)
    inverse = torch.argsort(perm)
    return apply_rope(x[..., perm], positions, cos, sin)[..., inverse]
