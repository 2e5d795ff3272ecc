"""What the compute-sanitizer targets (labkit.testing.sanitize_numba, sanitize_triton) share: run each case twice and check it.

Running every kernel twice catches state a launch leaves behind (the split counters a merging
block resets); synchronising after each call makes the sanitizer report a fault at the launch
that made it.
"""

from __future__ import annotations

from typing import Callable

import torch

from labkit import runtime
from labkit.checks.core import TOLERANCE, rel_error


def check_twice(runs: dict[str, Callable[[], torch.Tensor]], expected: torch.Tensor, dtype: torch.dtype,
                label: str) -> int:
    """Call each of ``runs`` ({name: fn returning [B, Hq, D]}) twice against the float64 ``expected``.

    Prints one line per run (the larger relative error of its two calls) and returns how many of
    the calls were outside :data:`labkit.checks.core.TOLERANCE` for ``dtype``.
    """
    bad = 0
    for name, run in runs.items():
        errs = []
        for _ in range(2):
            got = run()
            if runtime.MODE == "gpu":
                torch.cuda.synchronize()
            errs.append(rel_error(got, expected))
        wrong = sum(not e <= TOLERANCE[dtype] for e in errs)
        bad += wrong
        print(f"{'FAIL' if wrong else 'ok  '} {name} {label}: rel err {max(errs):.2e}")
    return bad


__all__ = ["check_twice"]
