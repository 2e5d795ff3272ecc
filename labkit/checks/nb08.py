"""Checks for notebook 08: a quantized KV cache.

* :func:`check_quantize` — ``quantize_rows(x) -> (data, scale)``: symmetric absmax int8
  quantization with one fp32 scale per row (the last dim).
* :func:`check_dequant_kernel` — a one-pass Triton decode kernel that reads int8 K/V and their
  per-token scales (signature in :func:`labkit.attention.quant_decode.launch_int8_one_pass`).

Every case draws fresh random inputs; outputs are poisoned with NaN first. The printed lines do
not depend on the mode or the sizes.
"""

from __future__ import annotations

import random

import torch

from labkit import runtime
from labkit.attention.reference import reference_decode
from labkit.checks.core import TOLERANCE, assert_close, fresh_seed, launch_kernel, poisoned, run_check

QMAX = 127
BLOCK_T = 16
# Keys scaled by 300 give scores near 10^3, and fp32 rounds each score by about 10^3 * 2^-24.
# That error goes straight into the softmax weights, so no fp32 kernel matches the float64
# reference to 1e-5 there. Softmax in fp32 over the same inputs went above 1e-5 in 1 draw of 150
# at the simulator's sizes (at most 4.8e-5 over 500,000 draws) and in 1 of 25 at the GPU's sizes.
# A kernel that overflows still fails: it writes inf or NaN.
LARGE_SCORE_RTOL = 2e-4
# fp32 computes x / scale to within about 3e-5 of a step (|x / scale| <= 127), so a value this
# close to a half step may round either way: a correct answer may differ from the reference there
# (with no slack, the reference itself failed about 1 call in 800).
TIE = 1e-4


def _reference_int8(x: torch.Tensor):
    from labkit.kvcache.quant import quantize

    q = quantize(x, "int8")
    return q.data, q.scale


def _steps_off(data: torch.Tensor, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """|data − x / scale| in float64, in steps (data int8 [..., D], x float [..., D], scale fp32 [...]).

    Round to nearest keeps it at most 0.5; :data:`TIE` more lets a near-tie round either way.
    Rows with scale 0 count x itself.
    """
    s = scale.double()[..., None]
    y = torch.where(s > 0, x.double() / torch.where(s > 0, s, 1.0), x.double())
    return (data.double() - y).abs()


def _dequant_error(data: torch.Tensor, scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """|data · scale − x| in float64, so the check adds no rounding of its own."""
    return (data.double() * scale.double()[..., None] - x.double()).abs()


def _as_pair(result, what="quantize_rows"):
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise AssertionError(f"{what} must return (data, scale); got {type(result).__name__}")
    data, scale = result
    if not isinstance(data, torch.Tensor) or not isinstance(scale, torch.Tensor):
        raise AssertionError(f"{what} must return two tensors; got {type(data).__name__}, {type(scale).__name__}")
    return data, scale


# ---------------------------------------------------------------------------------------------
# 08.quantize


def check_quantize(fn) -> None:
    """``fn(x)``: x [..., D] float -> (data int8 [..., D], scale fp32 [...]), x ≈ data · scale[..., None]."""
    rng = random.Random(fresh_seed())

    def run(x):
        data, scale = _as_pair(fn(x.clone()))
        if data.dtype != torch.int8:
            raise AssertionError(f"data dtype: {data.dtype} (yours) vs torch.int8 (expected)")
        if scale.dtype != torch.float32:
            raise AssertionError(f"scale dtype: {scale.dtype} (yours) vs torch.float32 (expected)")
        if tuple(data.shape) != tuple(x.shape) or tuple(scale.shape) != tuple(x.shape[:-1]):
            raise AssertionError(f"shapes: data {tuple(data.shape)}, scale {tuple(scale.shape)} (yours) vs "
                                 f"{tuple(x.shape)} and {tuple(x.shape[:-1])} (expected)")
        return data, scale

    def shape():
        return (rng.randint(1, 3), rng.randint(1, 4), rng.randint(2, 40), rng.choice([16, 64]))

    def matches_reference():
        x = torch.randn(shape()) * rng.uniform(0.1, 10)
        data, scale = run(x)
        want_d, want_s = _reference_int8(x)
        assert_close(scale, want_s, rtol=1e-6, what="scale = max|row| / 127")
        bad = _steps_off(data, x, want_s) > 0.5 + TIE
        if bool(bad.any()):
            diff = (data.int() - want_d.int()).abs()
            raise AssertionError(f"data: {int(bad.sum())} of {diff.numel()} values differ from round(x / scale) "
                                 f"(largest difference {int(diff.max())}); only values within {TIE:g} of a "
                                 "half step may round either way")

    def error_within_half_step():
        x = torch.randn(shape()) * 3
        data, scale = run(x)
        off = _steps_off(data, x, scale)
        if bool((off > 0.5 + TIE).any()):
            raise AssertionError(f"|dequantized − x| must be at most scale / 2 (round to nearest); yours is "
                                 f"{float(off.max()):.3g} of a step away")

    def absmax_maps_to_127():
        x = torch.randn(shape())
        data, _ = run(x)
        top = data.abs().amax(dim=-1)
        if not bool((top == QMAX).all()):
            raise AssertionError(f"each row's largest |value| must become ±127 (symmetric absmax); yours: "
                                 f"{sorted(set(top.flatten().tolist()))[:5]}")
        if int(data.min()) < -QMAX:
            raise AssertionError("data must stay in [-127, 127] (symmetric: -128 is never used)")

    def zero_rows():
        x = torch.randn(2, 5, 16)
        x[0, 1] = 0
        x[1, 4] = 0
        data, scale = run(x)
        deq = data.float() * scale[..., None]
        if not bool(torch.isfinite(deq).all()) or float(deq[0, 1].abs().max()) != 0 or float(deq[1, 4].abs().max()) != 0:
            raise AssertionError("a row of zeros must dequantize to zeros (no division by zero, no NaN)")

    def fp16_input():
        x = (torch.randn(shape()) * 2).half()
        data, scale = run(x)
        want_d, want_s = _reference_int8(x)
        assert_close(scale, want_s, rtol=1e-6, what="scale of an fp16 input")

    def wide_range():
        x = torch.randn(3, 8, 64) * torch.logspace(-4, 4, 8)[None, :, None]
        data, scale = run(x)
        rel = _dequant_error(data, scale, x).amax(-1) / x.double().abs().amax(-1)
        if float(rel.max()) > (0.5 + TIE) / QMAX:
            raise AssertionError(f"rows from 1e-4 to 1e4: relative error {float(rel.max()):.3g} > 1/254 "
                                 "(one scale per row keeps every row's error relative to its own max)")

    run_check("08.quantize", [
        ("matches the reference quantization (scale and data)", matches_reference),
        ("error at most half a step, every element", error_within_half_step),
        ("each row's absmax becomes ±127, nothing below -127", absmax_maps_to_127),
        ("rows of zeros give zeros, no NaN", zero_rows),
        ("fp16 input", fp16_input),
        ("rows of very different magnitudes", wide_range),
    ])


# ---------------------------------------------------------------------------------------------
# 08.dequant_kernel


def check_dequant_kernel(kernel) -> None:
    """``kernel``: notebook 08's one-pass int8 decode kernel (see ``launch_int8_one_pass``)."""
    from labkit.attention.quant_decode import launch_int8_one_pass
    from labkit.kvcache.quant import quantize

    rng = random.Random(fresh_seed())
    s = runtime.SIZES
    D, H = s.head_dim, s.heads
    long_t = max(t for t in s.check_lengths if t % BLOCK_T)
    short_t = max(t for t in s.check_lengths if 1 < t < BLOCK_T)
    device = runtime.device()

    def case(T, *, B=2, Hq=H, Hkv=H, dtype=torch.float32, k_scale=1.0, zero_row=False, rtol=None):
        q = torch.randn(B, Hq, D, device=device).to(dtype)
        kf = torch.randn(B, Hkv, T, D, device=device) * k_scale
        vf = torch.randn(B, Hkv, T, D, device=device)
        if zero_row:
            kf[:, :, 0] = 0
            vf[:, :, 0] = 0
        k, v = quantize(kf, "int8"), quantize(vf, "int8")
        out = poisoned(q.shape, dtype, device)
        launch_kernel(launch_int8_one_pass, kernel, q, k, v, out, block_t=BLOCK_T)
        expected = reference_decode(q, k.dequantize(torch.float64), v.dequantize(torch.float64))
        assert_close(out, expected, rtol=rtol or TOLERANCE[dtype],
                     what=f"output vs the dequantized cache (B={B}, Hq={Hq}, Hkv={Hkv}, T={T})")
        return out, q, kf, vf

    def within_quantization_bound():
        out, q, kf, vf = case(long_t)
        exact = reference_decode(q, kf, vf)
        err = float((out.double().cpu() - exact).norm() / exact.norm())
        if err > 0.03:
            raise AssertionError(f"relative error {err:.3g} against the unquantized cache > 0.03 (int8's bound)")

    run_check("08.dequant_kernel", [
        ("matches the float64 reference of the dequantized cache (fp32)", lambda: case(rng.randint(BLOCK_T + 1, long_t))),
        ("within int8's error bound of the unquantized cache", within_quantization_bound),
        ("T not a multiple of the block", lambda: case(long_t)),
        ("T shorter than one block", lambda: case(short_t)),
        ("T = 1", lambda: case(1)),
        ("GQA: 4 query heads per KV head", lambda: case(long_t, Hq=4 * H, Hkv=H)),
        ("fp16 queries and output", lambda: case(long_t, dtype=torch.float16)),
        ("large key scales: no overflow", lambda: case(long_t, k_scale=300.0, rtol=LARGE_SCORE_RTOL)),
        ("a token of zeros (scale 0)", lambda: case(short_t, zero_row=True)),
        ("every output element written (batch 3)", lambda: case(short_t, B=3)),
    ])


__all__ = ["SOLUTIONS", "check_dequant_kernel", "check_quantize"]

# The labkit objects that implement each exercise: an answer that is one of them, or only calls
# one of them, is flagged by the grader.
SOLUTIONS = {
    "08.quantize": ("labkit.kvcache.quant:quantize", "labkit.kvcache.quant:round_half_away",
                    "labkit.kvcache.quant:QuantKV"),
    "08.dequant_kernel": ("labkit.attention.triton_quant:_quant_attend_kernel",
                          "labkit.attention.quant_tile:attend_range", "labkit.attention.quant_tile:dot_tile",
                          "labkit.attention.quant_decode:quant_flash_decode",
                          "labkit.attention.quant_decode:int8_decode",
                          "labkit.attention.triton_quant:quant_launch"),
}
