"""Decode attention over a quantized KV cache: the validated entry points.

``decode_attention(..., impl="triton_int8" | "triton_fp8")`` (:func:`int8_decode`,
:func:`fp8_decode`), ``paged_decode`` over a quantized pool (:func:`quant_paged_decode`), the
float64 reference over the dequantized cache, and the launch of notebook 08's one-pass exercise
kernel. Each checks its arguments (dtype, device, shape, format, the GPU's compute capability)
with an error that names them, plans the split, and launches
:mod:`labkit.attention.triton_quant`'s kernel.
"""

from __future__ import annotations

import math

import torch

from labkit import runtime
from labkit.attention.triton_plan import HEAD_DIMS, plan_splits
from labkit.attention.triton_quant import quant_config_for, quant_launch
from labkit.attention.validate import check_out, check_tensor, supported_dtypes
from labkit.kvcache.quant import SCALE_DTYPE, QuantKV, get_format, quantize


def _check_quant(name: str, x, fmt: str | None, device) -> QuantKV:
    if not isinstance(x, QuantKV):
        raise TypeError(f"{name} must be a labkit.kvcache.quant.QuantKV (8-bit data and scales), got "
                        f"{type(x).__name__}")
    f = get_format(x.fmt)
    if fmt is not None and f.name != get_format(fmt).name:
        raise TypeError(f"{name} is in format {f.name!r}, expected {get_format(fmt).name!r}")
    if not runtime.is_sim() and x.device.type == "cuda":
        cc = torch.cuda.get_device_capability(x.device)
        if cc < f.min_cc:
            raise TypeError(f"format {f.name!r} needs compute capability {f.min_cc[0]}.{f.min_cc[1]}; this GPU "
                            f"has {cc[0]}.{cc[1]} (use 'int8')")
    check_tensor(f"{name}.data", x.data, ndim=4, dtypes=(f.dtype,), device=device)
    check_tensor(f"{name}.scale", x.scale, ndim=3, dtypes=(SCALE_DTYPE,), device=device)
    return x


def _as_quant(x, fmt: str):
    return x if isinstance(x, QuantKV) else quantize(x, fmt)


def quant_flash_decode(q, k, v, *, scale: float | None = None, lengths=None, num_splits: int | None = None,
                       out=None, fmt: str | None = None, block_t: int | None = None, num_warps: int | None = None,
                       num_stages: int | None = None, use_dot: bool | None = None,
                       biased: bool | None = None, heads_on_n: bool | None = None) -> torch.Tensor:
    """Flash-decoding over a quantized contiguous cache.

    q: [B, Hq, D] fp16/fp32 (bf16 where the GPU has it); k, v: :class:`~labkit.kvcache.quant.QuantKV`
    of data [B, Hkv, T, D] and scales [B, Hkv, T] (a plain tensor is quantized first, to
    ``fmt`` or int8 — convenient, not fast). ``lengths``: optional [B] int32 in [1, T].
    Returns [B, Hq, D] in q's dtype. ``num_splits``, ``block_t``, ``num_warps``,
    ``num_stages`` and ``use_dot`` override the plan; ``biased`` picks the biased int8
    conversion (:data:`labkit.attention.triton_quant.BIASED_INT8`), for tuning. ``heads_on_n``
    (default: the plan's, on sm_90) picks the tensor-core loop with the heads on the MMA's N
    side (:func:`~labkit.attention.quant_tile.dot_tile_t`), which runs one-warp programs only;
    the reduction path, the T4's, has no MMA and ignores it.
    """
    k, v = _as_quant(k, fmt or "int8"), _as_quant(v, fmt or "int8")
    device = runtime.device()
    check_tensor("q", q, ndim=3, dtypes=supported_dtypes(), device=device)
    _check_quant("k", k, fmt, device)
    _check_quant("v", v, k.fmt, device)
    B, Hq, D = q.shape
    Bk, Hkv, T, Dk = k.data.shape
    if v.data.shape != k.data.shape:
        raise ValueError(f"k and v must have one shape, got {tuple(k.data.shape)} and {tuple(v.data.shape)}")
    if Bk != B or Dk != D or Hq % Hkv or T < 1:
        raise ValueError(f"k {tuple(k.data.shape)} does not fit q {tuple(q.shape)}: expected [B={B}, Hkv dividing "
                         f"{Hq}, T >= 1, D={D}]")
    if D not in HEAD_DIMS:
        raise ValueError(f"head dim {D} is not supported here; expected one of {HEAD_DIMS}")
    if lengths is not None:
        check_tensor("lengths", lengths, ndim=1, dtypes=(torch.int32,), device=device)
        if lengths.shape[0] != B:
            raise ValueError(f"lengths must have shape [{B}], got {tuple(lengths.shape)}")
        if lengths.device.type == "cpu":
            lo, hi = int(lengths.min()), int(lengths.max())
            if lo < 1 or hi > T:
                raise ValueError(f"lengths must lie in [1, T={T}], got values from {lo} to {hi}")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    cfg = quant_config_for(D, Hq // Hkv, T, block_t=block_t, num_warps=num_warps, num_stages=num_stages,
                           use_dot=use_dot, heads_on_n=heads_on_n)
    splits = plan_splits(B, Hq, Hkv, T, cfg, num_splits=num_splits, device_index=q.device.index)
    return quant_launch(q, k, v, check_out(out, q), scale=scale, T=T, cfg=cfg, num_splits=splits, lengths=lengths,
                        biased=biased)


def int8_decode(q, k, v, *, scale=None, **kwargs):
    """``decode_attention(..., impl="triton_int8")``: :func:`quant_flash_decode` with int8."""
    return quant_flash_decode(q, k, v, scale=scale, fmt="int8", **kwargs)


def fp8_decode(q, k, v, *, scale=None, **kwargs):
    """``decode_attention(..., impl="triton_fp8")``: :func:`quant_flash_decode` with fp8 e4m3 (sm_89+)."""
    return quant_flash_decode(q, k, v, scale=scale, fmt="fp8_e4m3", **kwargs)


def quant_paged_decode(q, k_pool: QuantKV, v_pool: QuantKV, block_tables, lengths, *, scale: float | None = None,
                       out=None, check_values: bool = True, block_n: int | None = None, num_splits: int | None = None,
                       num_warps: int | None = None, num_stages: int | None = None) -> torch.Tensor:
    """Decode attention over a quantized paged pool (``paged_decode`` sends a QuantKV pool here).

    k_pool, v_pool: QuantKV of data [num_blocks, Hkv, BS, D] and scales [num_blocks, Hkv, BS];
    the rest as :func:`labkit.kvcache.paged_attention.paged_decode`.
    """
    device = runtime.device()
    check_tensor("q", q, ndim=3, dtypes=supported_dtypes(), device=device)
    _check_quant("k_pool", k_pool, None, device)
    _check_quant("v_pool", v_pool, k_pool.fmt, device)
    check_tensor("block_tables", block_tables, ndim=2, dtypes=(torch.int32,), device=device)
    check_tensor("lengths", lengths, ndim=1, dtypes=(torch.int32,), device=device)
    B, Hq, D = q.shape
    num_blocks, Hkv, BS, Dk = k_pool.data.shape
    if v_pool.data.shape != k_pool.data.shape or Dk != D or Hq % Hkv or BS & (BS - 1) or D not in HEAD_DIMS:
        raise ValueError(f"pools {tuple(k_pool.data.shape)}, {tuple(v_pool.data.shape)} do not fit q {tuple(q.shape)}: "
                         f"expected [num_blocks, Hkv dividing {Hq}, BS a power of two, D={D} in {HEAD_DIMS}]")
    if block_tables.shape[0] != B or lengths.shape[0] != B:
        raise ValueError(f"block_tables must be [{B}, max_blocks] and lengths [{B}]")
    max_blocks = block_tables.shape[1]
    if check_values:
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1 or hi > max_blocks * BS:
            raise ValueError(f"lengths must be in [1, {max_blocks * BS}], got values in [{lo}, {hi}]")
        used = torch.arange(max_blocks, device=lengths.device)[None, :] < (lengths[:, None] + BS - 1) // BS
        ids = block_tables[used]
        if int(ids.min()) < 0 or int(ids.max()) >= num_blocks:
            raise ValueError(f"block_tables points outside the pool of {num_blocks} blocks")
    capacity = max_blocks * BS
    cfg = quant_config_for(D, Hq // Hkv, capacity, block_t=block_n, num_warps=num_warps, num_stages=num_stages,
                           paged=True)
    splits = plan_splits(B, Hq, Hkv, capacity, cfg, num_splits=num_splits, device_index=q.device.index)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    return quant_launch(q, k_pool, v_pool, check_out(out, q), scale=scale, T=capacity, cfg=cfg, num_splits=splits,
                        lengths=lengths, block_tables=block_tables)


def reference_quant_decode(q, k: QuantKV, v: QuantKV, *, scale: float | None = None, lengths=None) -> torch.Tensor:
    """The float64 answer over the *dequantized* cache (what the kernel must match tightly)."""
    from labkit.attention.reference import reference_decode

    return reference_decode(q, k.dequantize(torch.float64).cpu(), v.dequantize(torch.float64).cpu(), scale=scale,
                            lengths=lengths)


def launch_int8_one_pass(kernel, q, k: QuantKV, v: QuantKV, out, *, block_t: int = 16, scale: float | None = None):
    """Launch notebook 08's exercise kernel: one program per (sequence, query head), grid ``(B·Hq,)``.

    ``kernel(Q, K, V, KS, VS, Out, scale, T, HQ, GROUP, HEAD_DIM, BLOCK_T)``: Q, Out [B, Hq, D];
    K, V the 8-bit data [B, Hkv, T, D]; KS, VS their fp32 scales [B, Hkv, T]; all contiguous.
    Program ``pid`` computes query head ``pid % HQ`` of sequence ``pid // HQ``, reading KV head
    ``(pid % HQ) // GROUP`` of that sequence, as notebook 03's ``one_pass_kernel`` does.
    """
    B, Hq, D = q.shape
    Hkv, T = k.data.shape[1], k.data.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    kernel[(B * Hq,)](q, k.data, v.data, k.scale, v.scale, out, scale, T, HQ=Hq, GROUP=Hq // Hkv, HEAD_DIM=D,
                      BLOCK_T=block_t)
    return out


__all__ = ["fp8_decode", "int8_decode", "launch_int8_one_pass", "quant_flash_decode", "quant_paged_decode",
           "reference_quant_decode"]
