"""Checks for notebook 02: the online-softmax update, the warm-up block reduction and the fused
Numba decode kernel."""

from __future__ import annotations

import math
import random

import torch

from labkit import runtime
from labkit.attention.online_softmax import softmax_attention, stream
from labkit.attention.reference import reference_decode
from labkit.attention.numba_exercises import launch_block_reduce
from labkit.checks._guard import assert_not_labkit, run_guarded
from labkit.checks.core import TOLERANCE, assert_close, assert_equal, fresh_seed, run_check


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
    states = run_guarded(stream, SOLUTIONS["02.online_update"], scores, values, chunks, update=fn)
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
        ("your own code (not labkit's answer)", lambda: assert_not_labkit(fn, SOLUTIONS["02.online_update"])),
    ])


def _reduce_case(kernel, rng, *, threads, N, R=1, offset=0.0, coalesced=False) -> torch.Tensor:
    g = torch.Generator().manual_seed(rng.randrange(1 << 62))
    x = torch.randn(R, N, generator=g, dtype=torch.float32) * 3 + offset
    row_max, row_sum, touched = launch_block_reduce(kernel, x, threads=threads)
    x64 = x.double()
    want_max = x64.max(dim=1).values
    want_sum = torch.exp(x64 - want_max[:, None]).sum(dim=1)
    assert_close(row_max, want_max, rtol=0.0, what=f"row_max (rows={R}, N={N}, {threads} threads)")
    assert_close(row_sum, want_sum, rtol=1e-5, what=f"row_sum = Σ exp(x - max) (rows={R}, N={N}, {threads} threads)")
    t = touched.cpu()
    if (t < 0).any():
        assert_equal(t >= 0, torch.ones_like(t, dtype=torch.bool),
                     what="touched (elements no thread recorded as read: False)")
    if coalesced:
        cols = torch.arange(N, dtype=torch.int32).expand(R, N) % threads
        assert_equal(t, cols, what="touched: the thread that read each element (expected column % threads)")
    return touched


def check_block_reduce(kernel, *, threads: int) -> None:
    """``kernel(x, row_max, row_sum, touched)``: one block of ``threads`` threads per row, reducing in shared memory."""
    rng = random.Random(fresh_seed())
    run_check("02.block_reduce", [
        ("N = threads: one element per thread", lambda: _reduce_case(kernel, rng, threads=threads, N=threads)),
        ("N a multiple of the threads: several elements per thread",
         lambda: _reduce_case(kernel, rng, threads=threads, N=3 * threads)),
        ("N not a multiple of the threads", lambda: _reduce_case(kernel, rng, threads=threads,
                                                                 N=2 * threads + rng.randint(1, threads - 1))),
        ("N smaller than the block: idle threads add nothing",
         lambda: _reduce_case(kernel, rng, threads=threads, N=rng.randint(1, threads - 1))),
        ("several rows: one block each", lambda: _reduce_case(kernel, rng, threads=threads, N=threads + 3, R=3)),
        ("values near 1000: exp(x - max) does not overflow",
         lambda: _reduce_case(kernel, rng, threads=threads, N=threads + 1, offset=1000.0)),
        ("every element read once, thread c % threads reads column c (coalesced)",
         lambda: _reduce_case(kernel, rng, threads=threads, N=2 * threads + 1, R=2, coalesced=True)),
        ("your own kernel (not labkit's)", lambda: assert_not_labkit(kernel, SOLUTIONS["02.block_reduce"])),
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
    kwargs = {} if scale is None else {"scale": scale}
    yours = run_guarded(fn, SOLUTIONS["02.fused_kernel"], q, k, v, **kwargs)
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
        ("your own kernel (not labkit's)", lambda: assert_not_labkit(fn, SOLUTIONS["02.fused_kernel"])),
    ])


__all__ = ["check_block_reduce", "check_fused_kernel", "check_online_update"]


# The labkit objects that implement each exercise of notebook 02 (an answer that is, wraps or
# calls one of them fails its check; the grader flags it). The warm-up has none in labkit.
SOLUTIONS = {
    "02.online_update": ("labkit.attention.online_softmax:online_update", "labkit.attention.online_softmax:merge",
                         "labkit.attention.online_softmax:softmax_attention"),
    "02.block_reduce": (),
    "02.fused_kernel": ("labkit.attention.numba_fused:numba_decode", "labkit.attention:decode_attention",
                        "labkit.attention.reference:reference_decode", "labkit.attention.naive:naive_decode",
                        "labkit.attention.sdpa:sdpa_decode", "labkit.attention.numba_fused:split_kernel",
                        "labkit.attention.numba_kernels:make_split_kernel"),
}
