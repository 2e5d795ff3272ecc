"""Helpers for labkit's own tests: compiling kernels for the T4 with no GPU."""

from labkit.testing.t4 import (T4_CC, T4_SHARED_BYTES, compile_numba_ptx_for_t4, compile_triton_for_t4,
                             compile_triton_many_for_t4)

__all__ = ["T4_CC", "T4_SHARED_BYTES", "compile_numba_ptx_for_t4", "compile_triton_for_t4",
           "compile_triton_many_for_t4"]
