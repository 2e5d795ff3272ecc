"""The key both top-p kernels search over: a float32's bits as an int32 that orders like the float.

Both of labkit's kernels (:mod:`labkit.decoding.sampling_bisect`, the plain bisection, and
:mod:`labkit.decoding.sampling_triton`, the fast one) look for a threshold by bisecting over
these keys, so the threshold lands exactly on a logit (or a weight) after at most 32 steps.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def ordered_key(x):
    """float32 -> int32 with the same order (-0.0 just below +0.0): bisect on it exactly."""
    bits = x.to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


__all__ = ["ordered_key"]
