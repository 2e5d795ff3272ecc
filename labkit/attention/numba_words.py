"""K and V as 8-byte words: the bit cast and the unpacking the fused Numba kernel reads them with.

The host views the cache as ``int64``, so one load brings four fp16 or two fp32 elements. An
fp16 value shifted into bits 28..13 of a 32-bit word, sign in bit 31, is an fp32 bit pattern
for the same number times ``2**-112`` (normal and subnormal halves alike): two or three integer
instructions per element instead of a conversion, and the kernel applies ``HALF_SCALE`` once
per score. The one bit cast, ``as_float``, is libdevice's on a GPU and NumPy's in the simulator.
"""

from __future__ import annotations

import numpy as np
from numba import config, cuda, int32

if config.ENABLE_CUDASIM:
    def as_float(bits):
        """The float32 whose bit pattern is the low 32 bits of ``bits`` (the simulator's bit cast)."""
        return np.array(int(bits) & 0xFFFFFFFF, dtype=np.uint32).view(np.float32)[()]
else:
    from numba.cuda.libdevice import int_as_float

    @cuda.jit(device=True, inline="always")
    def as_float(bits):
        """The float32 whose bit pattern is the low 32 bits of ``bits`` (int64)."""
        return int_as_float(int32(bits))

HALF_SCALE = 2.0 ** 112  # an fp16 bit pattern moved into fp32's place is the number times 2**-112


@cuda.jit(device=True, inline="always")
def _unpack_half(w, f):
    """Word ``w`` (int64) into ``f``: its four fp16 values, each times 2**-112.

    Half ``i`` is moved to the top and shifted down arithmetically, which puts its exponent and
    mantissa where fp32 has them and copies its sign into bits 31..28; the mask keeps bit 31.
    """
    f[0] = as_float(((w << 48) >> 35) & 0x8FFFE000)
    f[1] = as_float(((w << 32) >> 35) & 0x8FFFE000)
    f[2] = as_float(((w << 16) >> 35) & 0x8FFFE000)
    f[3] = as_float((w >> 35) & 0x8FFFE000)


@cuda.jit(device=True, inline="always")
def _unpack_float(w, f):
    """Word ``w`` (int64) into ``f``: its two fp32 values."""
    f[0] = as_float(w)
    f[1] = as_float(w >> 32)
