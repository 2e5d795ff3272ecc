"""Checks for notebook 03: decode attention in Triton, then flash-decoding.

* :func:`check_tile_copy` — the warm-up: a masked 2-D tile load and store, program ids recorded.
* :func:`check_one_pass` — a one-pass kernel with the signature of ``one_pass_kernel`` in
  :mod:`labkit.attention.triton_exercises`, launched by ``launch_one_pass``.
* :func:`check_split` — a split-K kernel writing each chunk's partial ``(m, l, acc)``.
* :func:`check_gqa_split` — a split-K kernel serving a whole GQA group from one read of K and V.
* :func:`check_split_plan` — how many splits fill the SMs.
* :func:`check_merge` — a merge kernel combining partials by log-sum-exp.

Every case draws fresh random inputs; outputs and partials are poisoned with NaN first.
Sizes come from :data:`labkit.runtime.SIZES` (tiny in sim mode); the printed lines don't.
"""

from __future__ import annotations

import math
import random

import torch
import triton

from labkit import runtime
from labkit.attention.reference import reference_decode
from labkit.attention.splits import chunk_bounds, merge_reference, reference_partials, sm_utilisation
from labkit.attention.triton_exercises import (launch_gqa_split, launch_merge, launch_one_pass, launch_split,
                                               launch_tile_copy, partial_buffers)
from labkit.checks._guard import assert_not_labkit, run_guarded
from labkit.checks.core import TOLERANCE, assert_close, assert_equal, fresh_seed, launch_kernel, poisoned, run_check

PARTIAL_TOL = 1e-4  # partials are fp32 whatever the inputs: only the kernel's fp32 arithmetic differs
BLOCK_T = 16  # the block the launchers use unless a case says otherwise


def _sizes():
    """(D, heads, T longer than a block and not a multiple of it, T shorter than a block)."""
    s = runtime.SIZES
    long_t = max(t for t in s.check_lengths if t % BLOCK_T)
    short_t = max(t for t in s.check_lengths if 1 < t < BLOCK_T)
    return s.head_dim, s.heads, long_t, short_t


def _inputs(B, Hq, Hkv, T, D, dtype, *, q_scale: float = 1.0):
    device = runtime.device()
    q = (torch.randn(B, Hq, D, device=device) * q_scale).to(dtype)
    k = torch.randn(B, Hkv, T, D, device=device).to(dtype)
    v = torch.randn(B, Hkv, T, D, device=device).to(dtype)
    return q, k, v


# ---------------------------------------------------------------------------------------------
# 03.one_pass


def check_one_pass(kernel) -> None:
    """``kernel``: a ``@triton.jit`` one-pass decode kernel (see :mod:`labkit.attention.triton_exercises`)."""
    rng = random.Random(fresh_seed())
    D, H, long_t, short_t = _sizes()

    def case(T, *, B=2, Hq=H, Hkv=H, dtype=torch.float32, head_dim=D, q_scale=1.0):
        q, k, v = _inputs(B, Hq, Hkv, T, head_dim, dtype, q_scale=q_scale)
        out = poisoned(q.shape, dtype, q.device)
        launch_kernel(launch_one_pass, kernel, q, k, v, out, block_t=BLOCK_T)
        assert_close(out, reference_decode(q, k, v), rtol=TOLERANCE[dtype], what=f"output (B={B}, Hq={Hq}, Hkv={Hkv}, T={T})")

    run_check("03.one_pass", [
        ("matches the float64 reference (fp32)", lambda: case(rng.randint(BLOCK_T + 1, long_t))),
        ("T not a multiple of the block", lambda: case(long_t)),
        ("T shorter than one block", lambda: case(short_t)),
        ("T = 1", lambda: case(1)),
        ("fp16 inputs", lambda: case(long_t, dtype=torch.float16)),
        ("GQA: 4 query heads share each KV head", lambda: case(long_t, Hq=4 * H, Hkv=H)),
        ("head dim 64", lambda: case(short_t, head_dim=64)),
        ("large scores: no overflow", lambda: case(long_t, q_scale=40.0)),
        ("every output element written (batch 3)", lambda: case(short_t, B=3, Hq=2 * H, Hkv=2)),
        ("your own kernel (not labkit's)", lambda: assert_not_labkit(kernel, SOLUTIONS["03.one_pass"])),
    ])


# ---------------------------------------------------------------------------------------------
# 03.split


def _assert_partials(m, l, acc, q, k, v):
    em, el, eacc = reference_partials(q, k, v, m.shape[-1])
    full = torch.isfinite(em)  # chunks that hold at least one token
    if (~full).any():
        assert_equal(m.cpu()[~full], em[~full], what="m of empty chunks (expected -inf)")
        assert_equal(l.cpu()[~full], el[~full], what="l of empty chunks (expected 0)")
        assert_equal(acc.cpu()[~full], eacc[~full], what="acc of empty chunks (expected 0)")
    assert_close(m.cpu()[full], em[full], rtol=PARTIAL_TOL, what="m, each chunk's max score")
    assert_close(l.cpu()[full], el[full], rtol=PARTIAL_TOL, what="l, each chunk's sum of exp(s - m)")
    assert_close(acc.cpu()[full], eacc[full], rtol=PARTIAL_TOL, what="acc, each chunk's sum of exp(s - m)·v")


def check_split(kernel) -> None:
    """``kernel``: a ``@triton.jit`` split kernel writing partials (see :mod:`labkit.attention.triton_exercises`)."""
    rng = random.Random(fresh_seed())
    D, H, long_t, short_t = _sizes()

    def case(T, splits, *, B=2, Hq=H, Hkv=H, dtype=torch.float32, block_t=BLOCK_T, q_scale=1.0):
        q, k, v = _inputs(B, Hq, Hkv, T, D, dtype, q_scale=q_scale)
        m, l, acc = partial_buffers(B, Hq, splits, D)
        launch_kernel(launch_split, kernel, q, k, v, m, l, acc, block_t=block_t)
        _assert_partials(m, l, acc, q, k, v)

    def several_blocks():
        # Blocks of 4 tokens in chunks of more than 4: the loop runs several times per chunk.
        T = long_t
        splits = 2
        assert chunk_bounds(T, splits)[0][1] > 4
        case(T, splits, block_t=4)

    run_check("03.split", [
        ("partials of every chunk (fp32)", lambda: case(long_t, rng.randint(2, 4))),
        ("chunks span several blocks", several_blocks),
        ("T not a multiple of the splits", lambda: case(long_t, 3 if long_t % 3 else 2)),
        ("T shorter than the splits: empty chunks give m = -inf, l = 0, acc = 0", lambda: case(short_t, short_t + 3)),
        ("T = 1", lambda: case(1, 2)),
        ("fp16 inputs", lambda: case(long_t, 3, dtype=torch.float16)),
        ("GQA: 4 query heads share each KV head", lambda: case(long_t, 2, Hq=4 * H, Hkv=H)),
        ("large scores: no overflow", lambda: case(long_t, 2, q_scale=40.0)),
    ])


# ---------------------------------------------------------------------------------------------
# 03.tile_copy (warm-up)


def check_tile_copy(kernel, *, block_m: int = 4, block_n: int = 8) -> None:
    """``kernel``: the warm-up ``tile_copy_kernel`` (see :mod:`labkit.attention.triton_exercises`)."""
    rng = random.Random(fresh_seed())
    device = runtime.device()

    def case(M, N, *, row_stride=None):
        wide = torch.randn(M, row_stride or N, device=device)
        x = wide[:, :N]
        y, p, ybuf, pbuf = launch_kernel(launch_tile_copy, kernel, x, block_m=block_m, block_n=block_n)
        outside = torch.ones_like(pbuf, dtype=torch.bool)
        outside[:M, :N] = False
        if (pbuf[outside] != -1).any() or torch.isfinite(ybuf[outside]).any():
            rows, cols = torch.nonzero(outside & ((pbuf != -1) | torch.isfinite(ybuf)), as_tuple=True)
            raise AssertionError(f"{len(rows)} elements written outside the [{M}, {N}] output, e.g. at "
                                 f"row {int(rows[0])}, column {int(cols[0])}: mask the stores (rows < M, columns < N)")
        assert_equal(y.cpu(), x.cpu(), what=f"Y (M={M}, N={N}, tile {block_m}×{block_n})")
        grid_n = triton.cdiv(N, block_n)
        i = torch.arange(M)[:, None] // block_m
        j = torch.arange(N)[None, :] // block_n
        assert_equal(p.cpu(), (i * grid_n + j).to(torch.int32),
                     what=f"P, the program that wrote each element (M={M}, N={N}; program (i, j) is number i·{grid_n} + j)")

    run_check("03.tile_copy", [
        ("M and N multiples of the tile", lambda: case(2 * block_m, 2 * block_n)),
        ("N not a multiple of BLOCK_N: masked columns", lambda: case(2 * block_m, 2 * block_n + rng.randint(1, block_n - 1))),
        ("M not a multiple of BLOCK_M: masked rows", lambda: case(2 * block_m + rng.randint(1, block_m - 1), block_n)),
        ("smaller than one tile", lambda: case(rng.randint(1, block_m - 1), rng.randint(1, block_n - 1))),
        ("a strided input: rows further apart than N", lambda: case(block_m + 1, block_n + 3, row_stride=2 * block_n + 5)),
        ("every element written by the program that owns its tile, nothing outside",
         lambda: case(3 * block_m - 1, 3 * block_n - 2)),
    ])


# ---------------------------------------------------------------------------------------------
# 03.gqa_split


def check_gqa_split(kernel) -> None:
    """``kernel``: a GQA split kernel (``gqa_split_kernel`` in :mod:`labkit.attention.triton_exercises`)."""
    rng = random.Random(fresh_seed())
    D, H, long_t, short_t = _sizes()

    def case(T, splits, *, group=4, B=2, Hkv=H, dtype=torch.float32, block_t=BLOCK_T, q_scale=1.0):
        q, k, v = _inputs(B, group * Hkv, Hkv, T, D, dtype, q_scale=q_scale)
        m, l, acc = partial_buffers(B, group * Hkv, splits, D)
        launch_kernel(launch_gqa_split, kernel, q, k, v, m, l, acc, block_t=block_t)
        _assert_partials(m, l, acc, q, k, v)

    run_check("03.gqa_split", [
        ("partials of every chunk, 4 query heads per KV head (fp32)", lambda: case(long_t, rng.randint(2, 4))),
        ("group of 1 (no GQA)", lambda: case(long_t, 2, group=1)),
        ("group of 3: padded rows of the query tile are not stored", lambda: case(long_t, 2, group=3)),
        ("group of 8", lambda: case(short_t, 2, group=8, Hkv=1)),
        ("chunks span several blocks", lambda: case(long_t, 2, block_t=4)),
        ("T shorter than the splits: empty chunks give m = -inf, l = 0, acc = 0", lambda: case(short_t, short_t + 3)),
        ("T = 1", lambda: case(1, 2)),
        ("fp16 inputs", lambda: case(long_t, 3, dtype=torch.float16)),
        ("large scores: no overflow", lambda: case(long_t, 2, q_scale=40.0)),
        ("every partial written (batch 3)", lambda: case(short_t, 2, B=3, group=2)),
        ("your own kernel (not labkit's)", lambda: assert_not_labkit(kernel, SOLUTIONS["03.gqa_split"])),
    ])


# ---------------------------------------------------------------------------------------------
# 03.split_plan


def _plan_reference(batch, kv_heads, T, sms, *, block_t=64, programs_per_sm=4, max_splits=64):
    tiles = max(1, math.ceil(T / block_t))
    base = batch * kv_heads
    cap = max(1, min(math.ceil(programs_per_sm * sms / base), tiles, max_splits))
    best, best_util = 1, -1.0
    for s in range(1, cap + 1):
        util = sm_utilisation(base * s, sms, programs_per_sm)
        if util >= best_util:
            best, best_util = s, util
    return best


def check_split_plan(fn) -> None:
    """``fn(batch, kv_heads, T, sms, *, block_t=64, programs_per_sm=4, max_splits=64) -> splits``."""
    rng = random.Random(fresh_seed())

    def case(batch, kv_heads, T, sms, **kw):
        want = _plan_reference(batch, kv_heads, T, sms, **kw)
        got = run_guarded(fn, SOLUTIONS["03.split_plan"], batch, kv_heads, T, sms, **kw)
        if not isinstance(got, int) or got != want:
            args = dict(batch=batch, kv_heads=kv_heads, T=T, sms=sms, **kw)
            util = lambda s: 100 * sm_utilisation(batch * kv_heads * s, sms, kw.get("programs_per_sm", 4))  # noqa: E731
            yours = f"{got!r}" + (f" ({util(got):.0f}% of the wave busy)" if isinstance(got, int) and got > 0 else "")
            raise AssertionError(f"for {args}: yours {yours} vs expected {want} ({util(want):.0f}% busy)")

    def random_shapes():
        for _ in range(20):
            case(rng.choice([1, 2, 4, 8, 16]), rng.choice([1, 2, 8, 12, 32]), rng.randint(1, 40_000),
                 rng.choice([40, 80, 108, 132]), block_t=rng.choice([16, 32, 64]))

    run_check("03.split_plan", [
        ("GPT-2 at batch 1 on a T4 (12 KV heads, 40 SMs)", lambda: case(1, 12, 4096, 40)),
        ("Llama-3-8B at batch 1 on an H100 (8 KV heads, 132 SMs)", lambda: case(1, 8, 8192, 132)),
        ("a short context: never more splits than tiles", lambda: case(1, 8, 100, 132)),
        ("a full GPU: batch × heads already fill a wave, 1 split", lambda: case(8, 32, 8192, 40)),
        ("wave quantisation: 8 × 32 heads on 132 SMs", lambda: case(8, 32, 4096, 132)),
        ("at most max_splits", lambda: case(1, 1, 1 << 20, 132, max_splits=16)),
        ("programs_per_sm", lambda: case(1, 12, 8192, 40, programs_per_sm=2)),
        ("random shapes", random_shapes),
        ("your own code (not labkit's answer)", lambda: assert_not_labkit(fn, SOLUTIONS["03.split_plan"])),
    ])


# ---------------------------------------------------------------------------------------------
# 03.merge


def check_merge(kernel) -> None:
    """``kernel``: a ``@triton.jit`` merge kernel (see :mod:`labkit.attention.triton_exercises`)."""
    rng = random.Random(fresh_seed())
    D, H, long_t, short_t = _sizes()
    device = runtime.device()

    def case(T, splits, *, B=2, Hq=H, Hkv=H, dtype=torch.float32, q_scale=1.0, of_partials=False):
        q, k, v = _inputs(B, Hq, Hkv, T, D, dtype, q_scale=q_scale)
        m, l, acc = (t.to(device, torch.float32) for t in reference_partials(q, k, v, splits))
        out = poisoned(q.shape, dtype, device)
        launch_kernel(launch_merge, kernel, m, l, acc, out)
        # Chunk maxima near 10^3 are off by up to 6e-5 in their fp32 copy, and two nearly tied chunks
        # carry that into the output (a perfect merge went past 1e-5 in 1 draw of 4500): for them the
        # answer to match is the float64 merge of the fp32 partials given.
        expected = merge_reference(m, l, acc) if of_partials else reference_decode(q, k, v)
        assert_close(out, expected, rtol=TOLERANCE[dtype], what=f"merged output ({splits} chunks, T={T})")
        return m, l, acc

    def matches_reference_merge():
        # The same partials through the float64 merge: your kernel computes exactly this.
        m, l, acc = case(long_t, 3)
        out = poisoned(acc.shape[:2] + acc.shape[3:], torch.float32, device)
        launch_kernel(launch_merge, kernel, m, l, acc, out)
        assert_close(out, merge_reference(m, l, acc), rtol=1e-6, what="merge of given partials")

    run_check("03.merge", [
        ("merges chunks into attention over the whole sequence", lambda: case(long_t, rng.randint(2, 4))),
        ("equals the log-sum-exp merge of the same partials", matches_reference_merge),
        ("one chunk", lambda: case(long_t, 1)),
        ("a number of chunks that is not a power of two", lambda: case(long_t, 7)),
        ("empty chunks (m = -inf, l = 0) add nothing", lambda: case(short_t, short_t + 3)),
        ("fp16 output", lambda: case(long_t, 3, dtype=torch.float16)),
        ("chunk maxima far apart: no overflow", lambda: case(long_t, 3, q_scale=400.0, of_partials=True)),
        ("every output element written (batch 3)", lambda: case(short_t, 2, B=3, Hq=2 * H)),
        ("your own kernel (not labkit's)", lambda: assert_not_labkit(kernel, SOLUTIONS["03.merge"])),
    ])


__all__ = ["check_gqa_split", "check_merge", "check_one_pass", "check_split", "check_split_plan", "check_tile_copy"]


# The labkit objects that implement each exercise of notebook 03 (an answer that is, wraps or
# calls one of them fails its check; the grader flags it). The warm-up has none in labkit.
SOLUTIONS = {
    "03.tile_copy": (),
    "03.one_pass": ("labkit.attention.triton_decode:_attend_kernel", "labkit.attention.triton_decode:triton_decode"),
    "03.gqa_split": ("labkit.attention.triton_decode:_attend_kernel", "labkit.attention.triton_decode:flash_decode",
                    "labkit.attention.splits:reference_partials"),
    "03.split_plan": ("labkit.attention.splits:num_splits_heuristic", "labkit.attention.splits:flash_attn_num_splits",
                      "labkit.checks.nb03:_plan_reference"),
    "03.merge": ("labkit.attention.triton_merge:_merge_kernel", "labkit.attention.splits:merge_reference"),
}
