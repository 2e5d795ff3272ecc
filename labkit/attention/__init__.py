"""Decode attention: one new query token per sequence against its KV cache.

Every implementation sits behind :func:`decode_attention`, so the model, the engine, the
benchmarks and the notebooks switch kernels by name::

    out = decode_attention(q, k, v, impl="triton_splitk")   # q [B, Hq, D]; k, v [B, Hkv, T, D]

Implementations are imported on first use: asking for the float64 reference never compiles
a kernel. Passes of several queries per sequence (prefill, verification) go through
:func:`masked_attention`, and causal attention over a whole sequence (training) through
:func:`causal_attention`.
"""

from __future__ import annotations

import importlib

from labkit.attention.reference import decode_bytes, reference_decode
from labkit.attention.sdpa import causal_attention, masked_attention
from labkit.attention.validate import validate_decode

IMPLEMENTATIONS = {
    "reference": "labkit.attention.reference:reference_decode",
    "sdpa": "labkit.attention.sdpa:sdpa_decode",
    "naive": "labkit.attention.naive:naive_decode",
    "numba": "labkit.attention.numba_fused:numba_decode",
    "triton": "labkit.attention.triton_decode:triton_decode",
    "triton_splitk": "labkit.attention.triton_decode:flash_decode",
    # k and v: labkit.kvcache.quant.QuantKV (8-bit data, a scale per token); notebook 08
    "triton_int8": "labkit.attention.quant_decode:int8_decode",
    "triton_fp8": "labkit.attention.quant_decode:fp8_decode",
}


def get_impl(name: str):
    """The function behind implementation ``name`` (see :data:`IMPLEMENTATIONS`)."""
    try:
        module, attr = IMPLEMENTATIONS[name].split(":")
    except KeyError:
        raise ValueError(f"impl={name!r} is not an implementation; expected one of {sorted(IMPLEMENTATIONS)}") from None
    return getattr(importlib.import_module(module), attr)


def decode_attention(q, k, v, *, impl: str = "triton_splitk", scale: float | None = None, **kwargs):
    """Decode attention through implementation ``impl``.

    q: [B, Hq, D]; k, v: [B, Hkv, T, D]; fp16 or fp32 (bf16 where the GPU has it), Hq a
    multiple of Hkv. Returns [B, Hq, D] in q's dtype (float64 for ``impl="reference"``).
    """
    return get_impl(impl)(q, k, v, scale=scale, **kwargs)


__all__ = ["IMPLEMENTATIONS", "causal_attention", "decode_attention", "decode_bytes", "get_impl", "masked_attention",
           "reference_decode", "validate_decode"]
