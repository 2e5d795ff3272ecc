"""The quantized kernel's launch plan on sm_90: the 128-token, 4-warp build against one-warp
programs of 32-token (and 16-token) tiles at several split counts, beside the fp16
flash-decoding kernel. 32 query heads over ``--hkv`` KV heads (32: MHA), d = 128, int8, CUDA
graphs, KV rotated past the L2. Writes ``quant-plan_<gpu>.json`` (``sweep_int8`` records
labelled as below; each setting is checked against the float64 reference first, up to 8k
tokens); prints a line per setting.

    LABKIT_MODE=gpu PYTHONPATH=. python scripts/gpu/quant_plan.py --out data/results [--hkv 8] [--labels plan]
        [--shapes 1x8192 8x8192]

"plan" is what ``quant_flash_decode`` picks (on sm_90 since 2026-12-07: the heads-on-N loop aimed
at four programs an SM, for MHA and for GQA up to 8 heads a KV head; "heads on N pps=7" the plan
before it). "4-warp" is the 128-token, 4-warp, 3-stage build
with splits aimed at two programs an SM. "1-warp pps=N" asks the split heuristic for N resident
programs an SM (at least four tiles a split), "16-token pps=N" the same with 16-token tiles and
four stages. "heads on N pps=N" is the one-warp plan's tiles with the loop that puts the query
heads on the MMA's N side (``quant_flash_decode(..., heads_on_n=True)``), at 7 and 8 programs an
SM (its 167 registers leave room for 8; also 5 and 6, and 6 with a fourth stage), for MHA and
GQA alike, and on 64-token tiles (four programs an SM) and 16-token ones (twelve). With ``--hkv`` below 32 the record is
``quant-plan-gqa<group>_<gpu>.json``. With another checkout's ``labkit`` first on
``PYTHONPATH`` the same settings time that checkout's kernel.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from labkit.attention.triton_plan import plan_splits
from labkit.attention.triton_quant import quant_config_for
from labkit.bench.quant import D, H, fp16_kernel_record, sweep
from labkit.bench.records import run_meta, save_records
from labkit.bench.timing import copy_roofline_gbps

SHAPES = ((1, 2048), (1, 8192), (1, 32768), (8, 2048), (8, 8192))


def aimed_splits(B: int, T: int, hkv: int, block_t: int, pps: int) -> int:
    """The plan's split heuristic for ``block_t``-token tiles, aimed at ``pps`` programs an SM."""
    cfg = replace(quant_config_for(D, H // hkv, T, block_t=block_t), programs_per_sm=pps)
    return plan_splits(B, H, hkv, T, cfg)


def settings(B: int, T: int, hkv: int = H) -> list[tuple[str, dict]]:
    def splits(block_t, pps):
        return aimed_splits(B, T, hkv, block_t, pps)

    found = [("plan", {}), ("4-warp", dict(block_t=128, num_warps=4, num_stages=3, num_splits=splits(128, 2)))]
    for pps in (5, 6, 7, 8):
        found.append((f"1-warp pps={pps}", dict(block_t=32, num_warps=1, num_stages=3, heads_on_n=False,
                                                num_splits=splits(32, pps))))
    for pps in (8, 12):
        found.append((f"16-token pps={pps}", dict(block_t=16, num_warps=1, num_stages=4, heads_on_n=False,
                                                  num_splits=splits(16, pps))))
    for pps in (5, 6, 7, 8):  # one warp: clean builds for every group (4 warps and 8+ heads take wgmma and byte gathers)
        found.append((f"heads on N pps={pps}", dict(block_t=32, num_warps=1, num_stages=3, heads_on_n=True,
                                                    num_splits=splits(32, pps))))
    # a fourth stage (about 33 KB of shared memory: six programs an SM)
    found.append(("heads on N 4-stage pps=6", dict(block_t=32, num_warps=1, num_stages=4, heads_on_n=True,
                                                   num_splits=splits(32, 6))))
    # the same loop on 64-token tiles (50 KB of shared memory: four programs an SM) and 16-token ones
    found.append(("heads on N 64-token pps=4", dict(block_t=64, num_warps=1, num_stages=3, heads_on_n=True,
                                                    num_splits=splits(64, 4))))
    found.append(("heads on N 16-token pps=12", dict(block_t=16, num_warps=1, num_stages=4, heads_on_n=True,
                                                     num_splits=splits(16, 12))))
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/results")
    p.add_argument("--hkv", type=int, default=H, help="KV heads (32 query heads)")
    p.add_argument("--labels", nargs="+", help="time only these settings")
    p.add_argument("--shapes", nargs="+", metavar="BxT", help="time only these shapes, e.g. 1x8192")
    args = p.parse_args()
    shapes = [tuple(int(n) for n in s.split("x")) for s in args.shapes] if args.shapes else SHAPES
    roof = copy_roofline_gbps()
    records = []
    for B, T in shapes:
        records.append(fp16_kernel_record(B, T, roof, warmup=10, rep=40, hkv=args.hkv))
        base = records[-1].time_ms
        print(f"B={B} T={T}: fp16 {base * 1e3:.2f} us", flush=True)
        found = [(label, kw) for label, kw in settings(B, T, args.hkv) if label in (args.labels or [label])]
        for r in sweep("int8", B, T, roof, 10, 40, found, hkv=args.hkv):
            r.extra["speedup_vs_fp16_kernel"] = base / r.time_ms
            records.append(r)
        torch.cuda.empty_cache()
    name = "quant-plan" if args.hkv == H else f"quant-plan-gqa{H // args.hkv}"
    print("wrote", save_records(records, name, run_meta(roof), Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
