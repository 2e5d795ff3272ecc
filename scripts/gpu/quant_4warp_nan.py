"""Why a 4-warp build of the heads-on-N loop once gave NaN: the GPU test's failing case
(B = 2, two KV heads of one query head each, D = 64, T = 1, 16 splits asked, 64-token tiles,
one stage) run many times, one-warp and multi-warp builds side by side, with the merge's
partials poisoned with NaN before each launch or left as the last launch wrote them. The split
count is capped at the tiles, as ``quant_flash_decode`` caps it: at T = 1 the case runs one
split, which writes the output itself (no merge).

    LABKIT_MODE=gpu PYTHONPATH=. python scripts/gpu/quant_4warp_nan.py [--reps 200] [--replay 3]
    compute-sanitizer --tool racecheck python scripts/gpu/quant_4warp_nan.py --reps 2

``quant_config_for`` refuses heads_on_n with more than one warp since 2026-12-07 (the test's
NaN, not reproduced when the case ran alone); this script builds the launch itself to find out
which it is: partials left unwritten (NaN only when poisoned), a shared-memory race (NaN now
and then either way, racecheck hazards) or wrong arithmetic (a large error every time). Prints a
line per build; exits 0 (a diagnosis, not a check).

The case failed only inside the test's sequence of 30 random cases (seed 24, both runs of that
day), so ``--replay N`` also replays that sequence N times as the test drew it then (num_warps
drawn from 1, 2, 4 and 8), fresh random data each time, and prints every case that misses the
test's tolerance.
"""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import replace

import torch

from labkit import runtime
from labkit.attention.quant_decode import reference_quant_decode
from labkit.attention.triton_plan import Config, plan_splits, workspace
from labkit.attention.triton_quant import quant_config_for, quant_launch
from labkit.bench.paged import reference_on_device
from labkit.checks.core import rel_error
from labkit.kvcache.quant import format_supported, quantize

CASES = [  # (B, Hkv, group, D, T, splits asked, block_t, stages)
    (2, 2, 1, 64, 1, 16, 64, 1),  # the GPU test's failing case
    (2, 2, 1, 64, 100, 16, 64, 1),
    (2, 2, 4, 64, 1, 16, 64, 1),
    (2, 2, 1, 128, 1, 16, 32, 3),
]


def replay(fmt: str, dev) -> list[str]:
    """tests/gpu/test_gpu_quant.py's heads-on-N cases as drawn on 2026-12-07 (before num_warps was
    pinned to 1), launched past quant_config_for's refusal; returns the cases that miss 2e-3."""
    rng, misses = random.Random(24), []
    for _ in range(30):
        B, Hkv, group, D = rng.randint(1, 4), rng.choice([1, 2, 8]), rng.choice([1, 1, 2, 4, 8]), rng.choice([64, 128])
        T = rng.choice([1, 7, 64, 100, 513, 2048, rng.randint(1, 5000)])
        lengths = torch.tensor([rng.choice([T, rng.randint(1, T)]) for _ in range(B)], dtype=torch.int32, device=dev)
        q = torch.randn(B, Hkv * group, D, device=dev, dtype=torch.float16)
        k, v = (quantize(torch.randn(B, Hkv, T, D, device=dev, dtype=torch.float16), fmt) for _ in range(2))
        kw = dict(num_splits=rng.choice([None, 1, 3, 16]))
        if rng.random() < 0.5:
            kw.update(block_t=rng.choice([16, 32, 64, 128]), num_stages=rng.choice([1, 2, 3, 4]),
                      num_warps=rng.choice([1, 2, 4, 8]))
        lens = lengths if rng.random() < 0.7 else None
        cfg = quant_config_for(D, group, T, block_t=kw.get("block_t"), num_stages=kw.get("num_stages"), heads_on_n=True)
        cfg = replace(cfg, num_warps=kw.get("num_warps", 1))
        splits = plan_splits(B, Hkv * group, Hkv, T, cfg, num_splits=kw["num_splits"])
        out = torch.full_like(q, float("nan"))
        quant_launch(q, k, v, out, scale=1 / math.sqrt(D), T=T, cfg=cfg, num_splits=splits, lengths=lens)
        expected = reference_on_device(q, k.dequantize(torch.float64), v.dequantize(torch.float64), lens)
        err = rel_error(out, expected)
        if not err <= 2e-3:
            misses.append(f"{fmt} B={B} Hkv={Hkv} group={group} D={D} T={T} lengths={lens is not None} {kw} "
                          f"-> {cfg.block_t}-token tiles, {cfg.num_warps} warps, {cfg.num_stages} stages, "
                          f"{splits} splits: relative error {err:.3g}")
    return misses


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--replay", type=int, default=0, help="replay the GPU test's sequence this many times")
    args = p.parse_args()
    dev = runtime.device()
    for i in range(args.replay):
        for fmt in (f for f in ("int8", "fp8_e4m3") if format_supported(f)):
            misses = replay(fmt, dev)
            print(f"replay {i} {fmt}: {len(misses)} of 30 cases miss", *misses, sep="\n  ", flush=True)
    torch.manual_seed(0)
    for B, Hkv, group, D, T, splits, block_t, stages in CASES:
        q = torch.randn(B, Hkv * group, D, device=dev, dtype=torch.float16)
        k, v = (quantize(torch.randn(B, Hkv, T, D, device=dev, dtype=torch.float16)) for _ in range(2))
        expected = reference_quant_decode(q, k, v)
        splits = max(1, min(splits, -(-T // block_t)))  # plan_splits' cap
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
