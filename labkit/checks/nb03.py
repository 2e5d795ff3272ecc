"""Checks for notebook 03: decode attention in Triton, then flash-decoding.

* :func:`check_one_pass` — a one-pass kernel with the signature of ``one_pass_kernel`` in
  :mod:`labkit.attention.triton_exercises`, launched by ``launch_one_pass``.
* :func:`check_split` — a split-K kernel writing each chunk's partial ``(m, l, acc)``.
* :func:`check_merge` — a merge kernel combining partials by log-sum-exp.

Every case draws fresh random inputs; outputs and partials are poisoned with NaN first.
Sizes come from :data:`labkit.runtime.SIZES` (tiny in sim mode); the printed lines don't.
"""

from __future__ import annotations

import random

import torch

from labkit import runtime
from labkit.attention.reference import reference_decode
from labkit.attention.splits import chunk_bounds, merge_reference, reference_partials
from labkit.attention.triton_exercises import launch_merge, launch_one_pass, launch_split, partial_buffers
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
# 03.merge


def check_merge(kernel) -> None:
    """``kernel``: a ``@triton.jit`` merge kernel (see :mod:`labkit.attention.triton_exercises`)."""
    rng = random.Random(fresh_seed())
    D, H, long_t, short_t = _sizes()
    device = runtime.device()

    def case(T, splits, *, B=2, Hq=H, Hkv=H, dtype=torch.float32, q_scale=1.0):
        q, k, v = _inputs(B, Hq, Hkv, T, D, dtype, q_scale=q_scale)
        m, l, acc = (t.to(device, torch.float32) for t in reference_partials(q, k, v, splits))
        out = poisoned(q.shape, dtype, device)
        launch_kernel(launch_merge, kernel, m, l, acc, out)
        expected = reference_decode(q, k, v)
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
        ("chunk maxima far apart: no overflow", lambda: case(long_t, 3, q_scale=400.0)),
        ("every output element written (batch 3)", lambda: case(short_t, 2, B=3, Hq=2 * H)),
    ])


__all__ = ["check_merge", "check_one_pass", "check_split"]

# The labkit objects that implement each exercise of this notebook ("module:object", or a whole
# module): the grader flags an answer that is, or only delegates to, one of them (labkit.course.reuse).
SOLUTIONS = {
    "03.one_pass": ("labkit.attention.triton_decode:triton_decode", "labkit.attention.triton_decode:flash_decode", "labkit.attention.triton_decode:_attend_kernel", "labkit.attention.reference:reference_decode"),
    "03.split": ("labkit.attention.triton_decode:flash_decode", "labkit.attention.triton_decode:_attend_kernel", "labkit.attention.splits:reference_partials"),
    "03.merge": ("labkit.attention.triton_merge:_merge_kernel", "labkit.attention.splits:merge_reference"),
}
