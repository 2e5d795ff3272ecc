"""The Numba split kernels the T4 PTX tests compile, as module attributes a child process can import.

:func:`labkit.testing.t4.compile_numba_ptx_for_t4` takes ``(module, attribute, signature)``
requests; ``split_kernel_{float16|float32}_d{64|128}_g{1|4}`` here are the kernels
:func:`labkit.attention.numba_fused.numba_decode` launches on a T4 (:data:`GPU_CONFIG`),
built by the same cached :func:`~labkit.attention.numba_fused.split_kernel`.
"""

from __future__ import annotations

import torch

from labkit.attention.numba_fused import GPU_CONFIG, HEAD_DIMS, split_kernel

for _D in HEAD_DIMS:
    for _G in (1, 4):
        for _dt in (torch.float16, torch.float32):
            globals()[f"split_kernel_{str(_dt)[6:]}_d{_D}_g{_G}"] = split_kernel(_D, _G, _dt, GPU_CONFIG)
