"""Why a 4-warp build of the heads-on-N loop once gave NaN: the GPU test's failing case
(B = 2, two KV heads of one query head each, D = 64, T = 1, 16 splits, 64-token tiles, one
stage) run many times, one-warp and multi-warp builds side by side, with the merge's partials
poisoned with NaN before each launch or left as the last launch wrote them.

    LABKIT_MODE=gpu PYTHONPATH=. python scripts/gpu/quant_4warp_nan.py [--reps 200]
    compute-sanitizer --tool racecheck python scripts/gpu/quant_4warp_nan.py --reps 2

``quant_config_for`` refuses heads_on_n with more than one warp since 2026-12-07 (the test's
NaN, not reproduced when the case ran alone); this script builds the launch itself to find out
which it is: partials left unwritten (NaN only when poisoned), a shared-memory race (NaN now
and then either way, racecheck hazards) or wrong arithmetic (a large error every time). Prints a
line per build; exits 0 (a diagnosis, not a check).
"""

from __future__ import annotations

import argparse
import math

import torch

from labkit import runtime
from labkit.attention.quant_decode import reference_quant_decode
from labkit.attention.triton_plan import Config, workspace
from labkit.attention.triton_quant import quant_launch
from labkit.checks.core import rel_error
from labkit.kvcache.quant import quantize

CASES = [  # (B, Hkv, group, D, T, splits, block_t, stages)
    (2, 2, 1, 64, 1, 16, 64, 1),  # the GPU test's failing case
    (2, 2, 1, 64, 100, 16, 64, 1),
    (2, 2, 4, 64, 1, 16, 64, 1),
    (2, 2, 1, 128, 1, 16, 32, 3),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=200)
    args = p.parse_args()
    dev = runtime.device()
    torch.manual_seed(0)
    for B, Hkv, group, D, T, splits, block_t, stages in CASES:
        q = torch.randn(B, Hkv * group, D, device=dev, dtype=torch.float16)
        k, v = (quantize(torch.randn(B, Hkv, T, D, device=dev, dtype=torch.float16)) for _ in range(2))
        expected = reference_quant_decode(q, k, v)
        for warps in (1, 2, 4, 8):
            cfg = Config(block_t=block_t, num_warps=warps, num_stages=stages, use_dot=True, heads_on_n=True)
            for poison in (False, True):
                nans, worst = 0, 0.0
                for _ in range(args.reps):
                    if poison:
                        for part in workspace(dev, B, Hkv * group, splits, D):
                            part.fill_(float("nan"))
                    out = torch.full_like(q, float("nan"))
                    quant_launch(q, k, v, out, scale=1 / math.sqrt(D), T=T, cfg=cfg, num_splits=splits)
                    err = rel_error(out, expected)
                    nans += not math.isfinite(err)
                    worst = max(worst, err) if math.isfinite(err) else worst
                print(f"B={B} Hkv={Hkv} group={group} D={D} T={T} splits={splits} block_t={block_t} "
                      f"stages={stages} warps={warps} poisoned={poison}: NaN in {nans}/{args.reps}, "
                      f"worst finite error {worst:.2e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
