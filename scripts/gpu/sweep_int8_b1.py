"""The int8 kernel at batch 1, 32 heads, d = 128, T tokens (default 8192): every tile, warp,
stage and split setting against the fp16 flash-decoding kernel, CUDA-graph timings, KV rotated
past the L2, each setting checked against the float64 reference first
(``labkit.bench.quant.sweep``). Writes ``<name>_<gpu>.json`` (``--name``, default
quant-b1-sweep). With no options it runs the full grid; the options narrow it
(``--block 128 --warps 4 --stages 2 3 --splits 0 8 --no-reductions``).

    LABKIT_MODE=gpu PYTHONPATH=. python scripts/gpu/sweep_int8_b1.py --out data/results [--T 8192]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from labkit.bench.quant import fp16_kernel_record, sweep
from labkit.bench.records import run_meta, save_records
from labkit.bench.timing import copy_roofline_gbps


def configs(blocks, warps, stages, splits, reductions):
    """(block_t, num_warps, num_stages, use_dot, num_splits) for the tensor-core path, and the
    reduction path's (32 and 64 tokens, one stage) when ``reductions``; a split of 0 is the plan's."""
    splits = [sp or None for sp in splits]
    found = [(bt, w, st, True, sp) for bt, w, st, sp in itertools.product(blocks, warps, stages, splits)]
    if reductions:
        found += [(bt, w, 1, False, sp) for bt, w, sp in itertools.product((32, 64), warps, (None, 16))]
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/results")
    p.add_argument("--T", type=int, default=8192)
    p.add_argument("--block", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    p.add_argument("--stages", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--splits", type=int, nargs="+", default=[0, 8, 16, 24], help="0: the plan's count")
    p.add_argument("--no-reductions", dest="reductions", action="store_false",
                   help="leave out the reduction path's settings")
    p.add_argument("--name", default="quant-b1-sweep", help="the record's name, before the GPU's")
    args = p.parse_args()
    T, roof = args.T, copy_roofline_gbps()
    records = [fp16_kernel_record(1, T, roof)]
    base = records[0].time_ms
    print(f"fp16 triton_splitk T={T}: {base * 1e3:.1f} us", flush=True)
    settings = [(None, dict(block_t=bt, num_warps=w, num_stages=st, use_dot=dot, num_splits=sp))
                for bt, w, st, dot, sp in configs(args.block, args.warps, args.stages, args.splits, args.reductions)]
    for r in sweep("int8", 1, T, roof, 10, 40, settings):
        r.extra["speedup_vs_fp16_kernel"] = base / r.time_ms
        records.append(r)
    print("wrote", save_records(records, args.name, run_meta(roof), Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
