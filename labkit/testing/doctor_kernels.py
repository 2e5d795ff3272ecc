"""The two tiny kernels ``labkit doctor`` runs. They live at module level because Numba's
simulator swaps ``cuda`` in a kernel's module globals; a kernel defined inside a function
would see the real ``numba.cuda`` there."""

import labkit  # noqa: F401,I001  (the mode must be set before numba and triton load)
import triton
import triton.language as tl
from numba import cuda


@cuda.jit
def axpy(out, x, y, a):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a * x[i] + y[i]


@triton.jit
def scale_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, 3.0 * tl.load(x_ptr + offs, mask=mask), mask=mask)
