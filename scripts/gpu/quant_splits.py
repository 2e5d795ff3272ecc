"""How many splits the heads-on-N plan should ask for on sm_90: the one-warp loop over 32-token
(and 64-token) tiles at fixed split counts, and the split heuristic aimed at 3, 4, 5 and 7
programs an SM, beside the plan and the fp16 flash-decoding kernel. 32 query heads, d = 128,
int8, CUDA graphs, KV rotated past the L2; each setting is checked against the float64
reference first (up to 8k tokens). Every shape is timed ``--reps`` times, to show the noise.
Prints a line per shape and pass; writes ``quant-splits_<gpu>.json``.

    LABKIT_MODE=gpu PYTHONPATH=. python scripts/gpu/quant_splits.py --out data/results

On an H100 (2026-12-07, ``data/results/h100/quant-splits_*.json``) 16 splits at batch 1 were
the fastest at 8k and 32k tokens, and aiming at four programs an SM was as fast as any setting
or faster at every shape, MHA and GQA 4: the plan aims at four since.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from quant_plan import aimed_splits  # this script's folder is first on sys.path

from labkit.bench.quant import H, fp16_kernel_record, sweep
from labkit.bench.records import run_meta, save_records
from labkit.bench.timing import copy_roofline_gbps

COUNTS_32 = (12, 14, 16, 18, 20, 22, 24, 26)  # fixed split counts, 32-token tiles (batch 1, MHA)
COUNTS_64 = (8, 12, 16, 20)  # and 64-token tiles
PPS = (3, 4, 5, 7)  # the heuristic's target of resident programs an SM
ONE_WARP = dict(num_warps=1, num_stages=3, heads_on_n=True)


def fixed_counts() -> list[tuple[str, dict]]:
    return ([("plan", {})] + [(f"n32 s={s}", dict(block_t=32, num_splits=s, **ONE_WARP)) for s in COUNTS_32]
            + [(f"n64 s={s}", dict(block_t=64, num_splits=s, **ONE_WARP)) for s in COUNTS_64])


def aimed(B: int, T: int, hkv: int) -> list[tuple[str, dict]]:
    found = [("plan", {})]
    for pps in PPS:
        s = aimed_splits(B, T, hkv, 32, pps)
        found.append((f"pps={pps}/s={s}", dict(block_t=32, num_splits=s, **ONE_WARP)))
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/results")
    p.add_argument("--reps", type=int, default=2)
    args = p.parse_args()
    roof = copy_roofline_gbps()
    records = []

    def run(study, B, T, hkv, found, rep):
        base = fp16_kernel_record(B, T, roof, warmup=10, rep=40, hkv=hkv)
        base.extra.update(study=study, rep=rep)
        records.append(base)
        line = []
        for r in sweep("int8", B, T, roof, 10, 40, found, hkv=hkv):
            r.extra.update(study=study, rep=rep, speedup_vs_fp16_kernel=base.time_ms / r.time_ms)
            records.append(r)
            line.append(f"{r.extra['label']}:{r.time_ms * 1e3:.1f}")
        print(f"{study} hkv={hkv} rep{rep} B={B} T={T} fp16 {base.time_ms * 1e3:.2f} | " + " ".join(line), flush=True)
        torch.cuda.empty_cache()

    for rep in range(args.reps):
        for T in (8192, 2048, 32768):
            run("fixed", 1, T, H, fixed_counts(), rep)
    for hkv in (H, 8):
        for rep in range(args.reps if hkv == H else 1):
            for B, T in ((1, 2048), (1, 8192), (1, 32768), (8, 2048), (8, 8192), (8, 32768)):
                if hkv == H or T < 32768:
                    run("aimed", B, T, hkv, aimed(B, T, hkv), rep)
    print("wrote", save_records(records, "quant-splits", run_meta(roof), Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
