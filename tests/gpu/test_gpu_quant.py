"""The quantized KV cache's kernels on a GPU (pytest -m gpu): int8 (and fp8 e4m3 on sm_89+)
flash-decoding against the float64 attention over the dequantized cache.

Random shapes cover what the interpreter cannot: the tensor-core path with its conversions
written in PTX, whole tiles and a partial last tile, contexts shorter than a tile, ragged
lengths, GQA groups and MHA, forced split counts, the paged pool, and the launch
configurations of the H100 sweep (tiles, warps, stages). Outputs start as NaN, so an element
the kernel leaves unwritten fails.
"""

from __future__ import annotations

import random

import labkit  # noqa: F401  (decides the mode before numba and triton load)
import pytest
import torch

from labkit import runtime
from labkit.attention.quant_decode import quant_flash_decode
from labkit.bench.paged import reference_on_device
from labkit.checks.core import rel_error
from labkit.kvcache.paged_attention import paged_decode
from labkit.kvcache.quant import format_supported, quantize, to_paged_quant

DEV = runtime.device()
TOL = 2e-3  # fp16 output; the tensor-core path rounds p·scale to fp16 (labkit.bench.quant's QUANT_TOLERANCE)
FORMATS = [f for f in ("int8", "fp8_e4m3") if format_supported(f)]


def _dequantized_reference(q, k, v, lengths):
    return reference_on_device(q, k.data.float() * k.scale[..., None], v.data.float() * v.scale[..., None], lengths)


@pytest.mark.parametrize("fmt", FORMATS)
def test_quant_kernel_matches_the_dequantized_reference(fmt):
    _random_cases(fmt, random.Random(23))


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_heads_on_n_loop_matches_the_dequantized_reference(fmt):
    """The loop with the heads on the MMA's N side (sm_90's plan; one warp) with its conversions
    in PTX, which the interpreter does not run: int8 keys without the subtraction, their bias
    taken off the scores. Long ranges catch an accumulator whose bias cancels (the values'
    bias, once: 0.4-2% error at 2-4k tokens on an H100)."""
    _random_cases(fmt, random.Random(24), heads_on_n=True)


def _random_cases(fmt, rng, **extra):
    failures = []
    for _ in range(30):
        B, Hkv, group, D = rng.randint(1, 4), rng.choice([1, 2, 8]), rng.choice([1, 1, 2, 4, 8]), rng.choice([64, 128])
        T = rng.choice([1, 7, 64, 100, 513, 2048, rng.randint(1, 5000)])
        lengths = torch.tensor([rng.choice([T, rng.randint(1, T)]) for _ in range(B)], dtype=torch.int32, device=DEV)
        q = torch.randn(B, Hkv * group, D, device=DEV, dtype=torch.float16)
        k = quantize(torch.randn(B, Hkv, T, D, device=DEV, dtype=torch.float16), fmt)
        v = quantize(torch.randn(B, Hkv, T, D, device=DEV, dtype=torch.float16), fmt)
        kw = dict(num_splits=rng.choice([None, 1, 3, 16]), **extra)
        if rng.random() < 0.5:  # a configuration of the sweep rather than the plan's
            kw.update(block_t=rng.choice([16, 32, 64, 128]), num_stages=rng.choice([1, 2, 3, 4]),
                      num_warps=1 if extra.get("heads_on_n") else rng.choice([1, 2, 4, 8]))
        use_lengths = rng.random() < 0.7
        out = torch.full_like(q, float("nan"))
        quant_flash_decode(q, k, v, lengths=lengths if use_lengths else None, out=out, **kw)
        err = rel_error(out, _dequantized_reference(q, k, v, lengths if use_lengths else None))
        if not err <= TOL:
            failures.append(f"B={B} Hkv={Hkv} group={group} D={D} T={T} lengths={lengths.tolist() if use_lengths else None} "
                            f"{kw}: relative error {err:.3g}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("fmt", FORMATS)
def test_quant_paged_kernel_matches_the_contiguous_one(fmt):
    rng = random.Random(8)
    for _ in range(10):
        B, Hkv, group, D, T = rng.randint(1, 4), rng.choice([2, 8]), rng.choice([1, 4]), 128, rng.randint(1, 3000)
        bs = rng.choice([16, 32, 64])
        lengths = torch.tensor([rng.randint(1, T) for _ in range(B)], dtype=torch.int32, device=DEV)
        q = torch.randn(B, Hkv * group, D, device=DEV, dtype=torch.float16)
        k = quantize(torch.randn(B, Hkv, T, D, device=DEV, dtype=torch.float16), fmt)
        v = quantize(torch.randn(B, Hkv, T, D, device=DEV, dtype=torch.float16), fmt)
        kp, tables = to_paged_quant(k, bs)
        vp, _ = to_paged_quant(v, bs, tables=tables)
        out = torch.full_like(q, float("nan"))
        paged_decode(q, kp, vp, tables.to(DEV), lengths, out=out, num_splits=rng.choice([None, 3]))
        err = rel_error(out, _dequantized_reference(q, k, v, lengths))
        assert err <= TOL, f"paged {fmt} B={B} Hkv={Hkv} group={group} T={T} bs={bs}: relative error {err:.3g}"
