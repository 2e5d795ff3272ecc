"""Run the Numba decode kernels a few times at small, odd shapes: a target for compute-sanitizer.

    compute-sanitizer --tool memcheck  --error-exitcode 3 python3 -m labkit.testing.sanitize_numba
    compute-sanitizer --tool racecheck --error-exitcode 3 python3 -m labkit.testing.sanitize_numba

Covers ``numba_decode``'s kernel in both its variants (rows clamped when T is under one tile;
the last tile moved back otherwise), fp16 and fp32, D 64 and 128, one split and several (the
last block's merge), GQA with a group larger than one block serves, T = 1, under one tile, not
a multiple of the tile; and notebook 02's exercise kernel. Every output starts as NaN and is
compared with the float64 reference; exits 1 on a wrong answer (the sanitizer's own exit code
reports memory errors and races).
"""

from __future__ import annotations

import sys

import labkit  # noqa: F401  (decides the mode before numba is imported)
import torch

from labkit import runtime
from labkit.attention import reference_decode
from labkit.attention.numba_exercises import launch_one_pass
from labkit.attention.numba_fused import numba_decode
from labkit.bench.attention import make_decode_inputs
from labkit.checks.core import poisoned
from labkit.course.solutions import load_fused_kernel
from labkit.testing.sanitize import check_twice

# (B, Hq, Hkv, T, D, dtype, splits)
CASES = [
    (1, 3, 3, 1, 64, torch.float32, None),
    (2, 4, 2, 5, 128, torch.float16, None),
    (1, 2, 2, 33, 64, torch.float16, 1),
    (3, 2, 1, 77, 128, torch.float32, 3),
    (1, 16, 2, 100, 128, torch.float16, 2),  # group 8 > max_group: two blocks per KV head
    (1, 5, 5, 301, 64, torch.float32, None),
    (2, 8, 4, 1000, 128, torch.float16, 7),  # group 2, seven splits, a ragged last tile in every split
]


def main() -> int:
    print(runtime.summary())
    fused_decode, tile = load_fused_kernel()
    bad = 0
    for B, Hq, Hkv, T, D, dtype, splits in CASES:
        q, k, v = make_decode_inputs(B, Hq, Hkv, T, D, dtype)
        expected = reference_decode(q, k, v)
        bad += check_twice({
            "numba_decode": lambda: numba_decode(q, k, v, splits=splits, out=poisoned(q.shape, q.dtype, q.device)),
            "exercise": lambda: fused_decode(q, k, v),
        }, expected, dtype, f"B={B} Hq={Hq} Hkv={Hkv} T={T} D={D} {str(dtype)[6:]} splits={splits}")
    print(f"{bad} wrong result(s); exercise tile {tile}; launch_one_pass from {launch_one_pass.__module__}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
