"""Nsight Compute's view of batch 1, 8k tokens (issue #23): the int8 split kernel (128-token tiles
and 4 warps as shipped; 64-token tiles with 4 and 2 warps) and the loads-only kernel of the
shipped grid (128- and 64-token tiles), each launched on three input sets. Run it under ncu, then
turn ncu's output into records (``quant-b1-ncu_<gpu>.json``):

    ncu --clock-control none --kernel-name regex:'_quant_attend|_stream_kernel' --section SpeedOfLight \\
        --section WarpStateStats --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \\
        python scripts/gpu/quant_b1_ncu.py > ncu.log 2>&1
    python scripts/gpu/quant_b1_ncu.py --parse ncu.log --out data/results
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
from pathlib import Path

RUNS = [("int8 split kernel", dict(block_t=128, warps=4)), ("int8 split kernel", dict(block_t=64, warps=4)),
        ("int8 split kernel", dict(block_t=64, warps=2)), ("loads only", dict(block_t=128, warps=4)),
        ("loads only", dict(block_t=64, warps=4))]  # each on SETS input sets, 3 stages, 8 splits
SETS, T, SPLITS = 3, 8192, 8
METRICS = {"Duration": "duration_us", "DRAM Throughput": "dram_pct_of_peak", "Elapsed Cycles": "elapsed_cycles",
           "SM Active Cycles": "sm_active_cycles", "SM Frequency": "sm_ghz", "L2 Cache Throughput": "l2_pct",
           "Compute (SM) Throughput": "sm_pct", "Warp Cycles Per Issued Instruction": "warp_cycles_per_issue",
           "Registers Per Thread": "registers", "Dynamic Shared Memory Per Block": "shared_kb",
           "Achieved Active Warps Per SM": "active_warps_per_sm", "Achieved Occupancy": "achieved_occupancy_pct"}


def launch() -> None:
    import torch

    from labkit.attention.splits import LOG2E
    from labkit.attention.triton_plan import workspace
    from labkit.attention.triton_quant import _quant_attend_kernel, quant_config_for, quant_constexprs
    from labkit.bench.quant import D, H, make_sets
    from labkit.bench.records import run_meta

    spec = importlib.util.spec_from_file_location("parts", Path(__file__).with_name("quant_b1_parts.py"))
    parts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parts)
    sets = make_sets(1, H, H, T, D, ("int8",), n=SETS)
    sink = torch.empty(H * SPLITS, device="cuda")
    for name, cfg in RUNS:
        bt, warps = cfg["block_t"], cfg["warps"]
        for s in sets:
            q, (k, v) = s["q"], s["int8"]
            if name == "loads only":
                parts._stream_kernel[(H, SPLITS)](k.data, v.data, k.scale, v.scale, sink, T, SPLITS, HEAD_DIM=D,
                                                  BLOCK_T=bt, NUM_STAGES=3, num_warps=warps)
                continue
            qc = quant_config_for(D, 1, T, block_t=bt, num_warps=warps, num_stages=3)
            meta = quant_constexprs(H, 1, D, qc, bs=1, has_lengths=False, split=True, paged=False)
            _quant_attend_kernel[(H, SPLITS)](q, k.data, v.data, k.scale, v.scale, q, q, q,
                                              *workspace(q.device, 1, H, SPLITS, D), LOG2E / math.sqrt(D), T, SPLITS,
                                              0, **meta, num_warps=warps)
    torch.cuda.synchronize()
    print("META " + json.dumps(run_meta()))


def parse(log_path: str, out: str, meta: dict | None = None) -> Path:
    """Records from ncu's text output: one per profiled launch, ncu's figures in ``extra``
    (``time_ms`` stays empty: ncu's duration is one launch with flushed caches, not a median)."""
    from labkit.bench.records import Record, save_records
    from labkit.kvcache.quant import quant_decode_bytes

    log = Path(log_path).read_text()
    found = re.search(r"^META (.*)$", log, re.M)
    meta = meta or json.loads(found.group(1))
    blocks = re.split(r"\n  (?=_quant_attend_kernel|_stream_kernel)", log)[1:]
    names = [run for run in RUNS for _ in range(SETS)]
    if len(blocks) != len(names):
        raise ValueError(f"{len(blocks)} profiled launches in {log_path}, expected {len(names)}")
    shape = {"B": 1, "Hq": 32, "Hkv": 32, "T": T, "D": 128}
    records = []
    for block, (name, cfg) in zip(blocks, names):
        extra = dict(cfg, stages=3, splits=SPLITS)
        for label, key in METRICS.items():
            m = re.search(r"\n\s+" + re.escape(label) + r"\s+(\S+)?\s+([\d,.]+)\n", block)
            extra[key] = float(m.group(2).replace(",", ""))
        extra["sm_active_pct"] = round(100 * extra["sm_active_cycles"] / extra["elapsed_cycles"], 1)
        records.append(Record(name, shape, "int8", quant_decode_bytes(1, 32, 32, T, 128, "int8"), None, None, None,
                              extra))
    return save_records(records, "quant-b1-ncu", meta, Path(out))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parse", metavar="LOG", help="ncu's output of a run to turn into records")
    p.add_argument("--out", default="data/results")
    args = p.parse_args()
    if args.parse:
        print("wrote", parse(args.parse, args.out))
    else:
        launch()
