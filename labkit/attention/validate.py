"""Input validation shared by every decode-attention implementation.

Bad input must fail here, with the argument's name and what was expected, never inside a
kernel (where it crashes the process or, worse, returns a silently wrong answer).
"""

from __future__ import annotations

import torch

from labkit import runtime

FP16_FP32 = (torch.float16, torch.float32)


def bf16_supported() -> bool:
    """bf16 needs compute capability 8.0 (the T4, 7.5, has none); the CPU simulators have it."""
    if runtime.is_sim():
        return True
    return torch.cuda.is_bf16_supported()


def supported_dtypes(bf16: bool = True) -> tuple[torch.dtype, ...]:
    """fp16 and fp32 always; bf16 where the GPU has it (and ``bf16`` is allowed)."""
    return FP16_FP32 + ((torch.bfloat16,) if bf16 and bf16_supported() else ())


def check_tensor(name: str, t, *, ndim: int, dtypes=None, device: torch.device | None = None,
                 contiguous: bool = True) -> None:
    """Raise ``TypeError``/``ValueError`` naming ``name`` unless ``t`` is as expected."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        extra = " (bf16 needs compute capability 8.0; a T4 has 7.5)" if t.dtype == torch.bfloat16 else ""
        raise TypeError(f"{name} has dtype {str(t.dtype).replace('torch.', '')}; expected one of {names}{extra}")
    if device is not None and t.device.type != device.type:
        raise ValueError(f"{name} is on {t.device}, expected {device.type} (labkit is in {runtime.MODE} mode)")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous()); got strides {t.stride()}")


def check_out(out, q, name: str = "q"):
    """``out`` if it is a 3-d tensor of the shape, dtype and device of ``q`` (called ``name`` in
    errors), else a new one like ``q``."""
    if out is None:
        return torch.empty_like(q)
    check_tensor("out", out, ndim=3, dtypes=(q.dtype,), device=q.device)
    if out.shape != q.shape:
        raise ValueError(f"out must have {name}'s shape {tuple(q.shape)}, got {tuple(out.shape)}")
    return out


def validate_decode(q, k, v, *, dtypes=None, head_dims=None, device: torch.device | None = None,
                    lengths=None) -> tuple[int, int, int, int, int]:
    """Validate decode-attention inputs and return ``(B, Hq, Hkv, T, D)``.

    q: [B, Hq, D]; k, v: [B, Hkv, T, D], all one dtype, with Hq a multiple of Hkv.
    lengths (optional): [B] integer tensor, 1 ≤ lengths[b] ≤ T, the valid KV length per sequence.
    """
    dtypes = supported_dtypes() if dtypes is None else dtypes
    check_tensor("q", q, ndim=3, dtypes=dtypes, device=device)
    check_tensor("k", k, ndim=4, dtypes=dtypes, device=device)
    check_tensor("v", v, ndim=4, dtypes=dtypes, device=device)
    B, Hq, D = q.shape
    Bk, Hkv, T, Dk = k.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if Bk != B:
        raise ValueError(f"k has batch {Bk} but q has batch {B}")
    if Dk != D:
        raise ValueError(f"k has head dim {Dk} but q has head dim {D}")
    if T < 1:
        raise ValueError("k and v must hold at least one token (T >= 1)")
    if Hkv < 1 or Hq % Hkv:
        raise ValueError(f"q's heads ({Hq}) must be a multiple of k's heads ({Hkv}) for grouped-query attention")
    if head_dims is not None and D not in head_dims:
        raise ValueError(f"head dim {D} is not supported here; expected one of {tuple(head_dims)}")
    if lengths is not None:
        check_tensor("lengths", lengths, ndim=1, dtypes=(torch.int32, torch.int64), device=device)
        if lengths.shape[0] != B:
            raise ValueError(f"lengths must have shape [{B}], got {tuple(lengths.shape)}")
    return B, Hq, Hkv, T, D
