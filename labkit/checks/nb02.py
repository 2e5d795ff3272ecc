"""Checks for notebook 02: the online-softmax update and the fused Numba decode kernel."""

from __future__ import annotations

import math
import random

import torch

from labkit import runtime
from labkit.attention.online_softmax import softmax_attention, stream
from labkit.attention.reference import reference_decode
from labkit.checks.core import TOLERANCE, assert_close, fresh_seed, run_check


def _partition(rng: random.Random, T: int) -> list[int]:
    cuts = sorted(rng.sample(range(1, T), rng.randint(1, min(5, T - 1))))
    return [b - a for a, b in zip([0] + cuts, cuts + [T])]


def _stream_case(fn, rng, *, chunks=None, order=None, offset=0.0) -> None:
    T, D = rng.randint(8, 40), rng.randint(2, 8)
    g = torch.Generator().manual_seed(rng.randrange(1 << 62))
    scores = torch.randn(T, generator=g, dtype=torch.float64) * 3 + offset
    if order == "falling":  # the largest score comes first: later chunks never raise the max
        scores = scores.sort(descending=True).values
    elif order == "rising":  # every chunk raises the max: every chunk rescales
        scores = scores.sort().values
    values = torch.randn(T, D, generator=g, dtype=torch.float64)
    chunks = chunks(T) if callable(chunks) else _partition(rng, T)
    states = stream(scores, values, chunks, update=fn)
    last = states[-1]
    if not math.isfinite(last.m) or last.m != float(scores.max()):
        raise AssertionError(f"final m is {last.m!r}; expected the largest score {float(scores.max())!r}")
    if not last.l > 0 or not math.isfinite(last.l):
        raise AssertionError(f"final l is {last.l!r}; expected a positive finite sum")
    assert_close(last.acc / last.l, softmax_attention(scores, values), rtol=1e-10,
                 what=f"acc / l after chunks {chunks}")


def check_online_update(fn) -> None:
    """``fn(m, l, acc, scores, values) -> (m, l, acc)``: fold one chunk into the running state."""
    rng = random.Random(fresh_seed())
    run_check("02.online_update", [
        ("one chunk: equals softmax(s)·V", lambda: _stream_case(fn, rng, chunks=lambda T: [T])),
        ("uneven chunks", lambda: _stream_case(fn, rng)),
        ("chunks of one score each", lambda: _stream_case(fn, rng, chunks=lambda T: [1] * T)),
        ("the max arrives first (later chunks keep it)", lambda: _stream_case(fn, rng, order="falling")),
        ("every chunk raises the max (rescaling)", lambda: _stream_case(fn, rng, order="rising")),
        ("scores near 1000 do not overflow", lambda: _stream_case(fn, rng, offset=1000.0)),
    ])


def _decode_case(fn, rng, *, block, T, B=None, Hq=None, Hkv=None, dtype=torch.float32, scale=None,
                 q_gain=1.0, rtol=None) -> None:
    Hkv = Hkv or runtime.SIZES.heads
    Hq = Hq or Hkv
    B = B or rng.randint(1, 2)
    D = runtime.SIZES.head_dim
    g = torch.Generator().manual_seed(rng.randrange(1 << 62))
    q, k, v = (torch.randn(s, generator=g, dtype=torch.float32) for s in ((B, Hq, D), (B, Hkv, T, D), (B, Hkv, T, D)))
    q, k, v = (t.to(runtime.device(), dtype) for t in (q * q_gain, k, v))
    expected = reference_decode(q, k, v, scale=scale)
    yours = fn(q, k, v) if scale is None else fn(q, k, v, scale=scale)
    if runtime.MODE == "gpu":
        torch.cuda.synchronize()  # a kernel fault surfaces here, in this property
    assert_close(yours, expected, rtol=rtol or TOLERANCE[dtype],
                 what=f"output for B={B} Hq={Hq} Hkv={Hkv} T={T} D={D} {str(dtype).replace('torch.', '')}")


def check_fused_kernel(fn, *, block: int) -> None:
    """``fn(q, k, v, scale=None) -> [B, Hq, D]`` launching your kernel; ``block``: tokens per tile.

    Its output buffer starts full of NaN (``launch_one_pass`` does that), so an element the
    kernel never writes fails here.
    """
    rng = random.Random(fresh_seed())

    def ragged():
        return 2 * block + rng.randint(1, block - 1)

    run_check("02.fused_kernel", [
        ("matches the float64 reference (fp32)", lambda: _decode_case(fn, rng, block=block, T=2 * block)),
        ("T not a multiple of the block", lambda: _decode_case(fn, rng, block=block, T=ragged())),
        ("T shorter than one block", lambda: _decode_case(fn, rng, block=block, T=rng.randint(2, block - 1))),
        ("T = 1", lambda: _decode_case(fn, rng, block=block, T=1)),
        ("fp16 inputs", lambda: _decode_case(fn, rng, block=block, T=ragged(), dtype=torch.float16)),
        ("GQA: 2 query heads per KV head", lambda: _decode_case(fn, rng, block=block, T=ragged(), Hq=4, Hkv=2)),
        ("the scale argument", lambda: _decode_case(fn, rng, block=block, T=block + 1, scale=rng.uniform(0.05, 0.5))),
        ("large scores do not overflow",
         lambda: _decode_case(fn, rng, block=block, T=ragged(), q_gain=300.0, rtol=1e-3)),
        ("every output element written", lambda: _decode_case(fn, rng, block=block, T=ragged(), B=3, Hq=3, Hkv=1)),
    ])


__all__ = ["check_fused_kernel", "check_online_update"]

# The labkit objects that implement each exercise of this notebook ("module:object", or a whole
# module): the grader flags an answer that is, or only delegates to, one of them (labkit.course.reuse).
SOLUTIONS = {
    "02.online_update": ("labkit.attention.online_softmax:online_update",),
    "02.fused_kernel": ("labkit.attention.numba_fused:numba_decode", "labkit.attention.numba_fused:split_kernel", "labkit.attention.numba_kernels:make_split_kernel", "labkit.attention.reference:reference_decode"),
}
