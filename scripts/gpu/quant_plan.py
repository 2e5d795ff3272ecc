"""The quantized kernel's launch plan on sm_90: the 128-token, 4-warp build it had against one-warp
programs of 32-token tiles at several split counts, beside the fp16 flash-decoding kernel.
32 heads (MHA), d = 128, int8, CUDA graphs, KV rotated past the L2. Writes
``quant-plan_<gpu>.json`` (``sweep_int8`` records labelled as below; each setting is checked
against the float64 reference first, up to 8k tokens); prints a line per setting.

    LABKIT_MODE=gpu PYTHONPATH=. python scripts/gpu/quant_plan.py --out data/results

"plan" is what ``quant_flash_decode`` picks now. "4-warp" is the plan before it (128-token
tiles, 4 warps, 3 stages, splits aimed at two programs an SM). "1-warp pps=N" asks the split
heuristic for N resident programs an SM (seven fit: 253 registers and 29 KB of shared memory
each on sm_90).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from labkit.attention.splits import num_splits_heuristic, sm_count
from labkit.bench.quant import H, fp16_kernel_record, sweep
from labkit.bench.records import run_meta, save_records
from labkit.bench.timing import copy_roofline_gbps

SHAPES = ((1, 2048), (1, 8192), (1, 32768), (8, 2048), (8, 8192))


def settings(B: int, T: int, sms: int) -> list[tuple[str, dict]]:
    def splits(block_t, pps):
        return num_splits_heuristic(B, H, T, sms, block_t=block_t, programs_per_sm=pps)

    found = [("plan", {}), ("4-warp", dict(block_t=128, num_warps=4, num_stages=3, num_splits=splits(128, 2)))]
    for pps in (3, 4, 5, 6, 7):
        found.append((f"1-warp pps={pps}", dict(block_t=32, num_warps=1, num_stages=3, num_splits=splits(32, pps))))
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/results")
    args = p.parse_args()
    roof, sms = copy_roofline_gbps(), sm_count()
    records = []
    for B, T in SHAPES:
        records.append(fp16_kernel_record(B, T, roof, warmup=10, rep=40))
        base = records[-1].time_ms
        print(f"B={B} T={T}: fp16 {base * 1e3:.2f} us", flush=True)
        for r in sweep("int8", B, T, roof, 10, 40, settings(B, T, sms)):
            r.extra["speedup_vs_fp16_kernel"] = base / r.time_ms
            records.append(r)
        torch.cuda.empty_cache()
    print("wrote", save_records(records, "quant-plan", run_meta(roof), Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
