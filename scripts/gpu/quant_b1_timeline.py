"""When each program of the int8 kernel starts and ends (issue #23): batch 1, 32 heads, d = 128,
8k tokens, the shipped grid (32 heads × 8 splits, 128-token tiles, 3 stages). A copy of the
kernel's contiguous path and a loads-only kernel read the GPU's global timer (ns) on entry and
exit and the SM they ran on. Prints the spread of starts and ends and the SMs' busy time, and
writes ``quant-b1-timeline_<gpu>.json`` (each launch's summary in its record's ``extra``).

    LABKIT_MODE=gpu PYTHONPATH=. python scripts/gpu/quant_b1_timeline.py --out data/results
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import triton
import triton.language as tl

from labkit.attention.quant_tile import attend_range
from labkit.attention.splits import LOG2E
from labkit.attention.triton_plan import workspace
from labkit.bench.quant import D, H, make_sets
from labkit.bench.records import Record, run_meta, save_records
from labkit.kvcache.quant import quant_decode_bytes


@triton.jit
def _now(x):
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [x], dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def _smid(x):
    return tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r,r", [x], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _timed_kernel(Q, K, V, KS, VS, Mws, Lws, Accws, Stamps, qk_scale, T, num_splits, HEAD_DIM: tl.constexpr,
                  BLOCK_T: tl.constexpr, NUM_STAGES: tl.constexpr, LOADS_ONLY: tl.constexpr):
    # The shipped kernel's contiguous tensor-core path for one head per KV head (or its loads
    # alone), with the global timer read on entry and after the last store.
    pid = tl.program_id(0)
    split = tl.program_id(1)
    t0 = _now(pid)
    tiles = tl.cdiv(tl.cdiv(T, BLOCK_T), num_splits)
    t_begin = split * tiles * BLOCK_T
    t_end = tl.minimum(t_begin + tiles * BLOCK_T, T)
    row0 = pid.to(tl.int64) * T + t_begin
    offs_d = tl.arange(0, HEAD_DIM)[None, :]
    offs_g = tl.arange(0, 16)[:, None]
    part = (pid + offs_g).to(tl.int64) * num_splits + split
    if LOADS_ONLY:
        offs_t = tl.arange(0, BLOCK_T)
        offs = (row0 + offs_t)[:, None] * HEAD_DIM + offs_d
        k_ptrs, v_ptrs = K + offs, V + offs
        acc = tl.zeros([BLOCK_T, HEAD_DIM], dtype=tl.int8)
        for _ in tl.range(0, tiles, num_stages=NUM_STAGES):
            acc = tl.maximum(acc, tl.maximum(tl.load(k_ptrs), tl.load(v_ptrs)))
            k_ptrs += BLOCK_T * HEAD_DIM
            v_ptrs += BLOCK_T * HEAD_DIM
        tl.store(Mws + pid * num_splits + split, tl.max(tl.max(acc, axis=1), axis=0).to(tl.float32))
    else:
        q_op = tl.load(Q + pid * HEAD_DIM + offs_g * 0 + offs_d, mask=offs_g == 0, other=0.0).to(tl.float16)
        m, l, acc = attend_range(q_op, q_op.to(tl.float32), K, V, KS, VS, row0, t_end - t_begin, qk_scale, 16,
                                 HEAD_DIM, BLOCK_T, NUM_STAGES, False, True)
        tl.store(Mws + part, m, mask=offs_g == 0)
        tl.store(Lws + part, l, mask=offs_g == 0)
        tl.store(Accws + part * HEAD_DIM + offs_d, acc, mask=offs_g == 0)
    t1 = _now(pid)
    slot = (pid * num_splits + split) * 3
    tl.store(Stamps + slot, t0)
    tl.store(Stamps + slot + 1, t1)
    tl.store(Stamps + slot + 2, _smid(pid).to(tl.int64))


def summarise(stamps: torch.Tensor, splits: int) -> dict:
    s = stamps.view(-1, 3).cpu()
    t0, t1, sm = s[:, 0], s[:, 1], s[:, 2]
    base = int(t0.min())
    start, end = (t0 - base).double() / 1e3, (t1 - base).double() / 1e3  # µs from the first start
    per_sm = {}
    for i in range(len(sm)):
        per_sm.setdefault(int(sm[i]), []).append(i)
    busy = [float(max(end[i] for i in v) - min(start[i] for i in v)) for v in per_sm.values()]
    q = lambda x, p: float(torch.quantile(x, p))  # noqa: E731
    return {"programs": len(sm), "sms_used": len(per_sm),
            "programs_per_sm": sorted({len(v) for v in per_sm.values()}),
            "start_us": [q(start, p) for p in (0, .5, 1)], "end_us": [q(end, p) for p in (0, .1, .5, .9, 1)],
            "duration_us": [q(end - start, p) for p in (0, .5, 1)],
            "sm_busy_mean_us": sum(busy) / len(busy), "span_us": float(end.max()),
            "end_by_split_us": [float(end.view(-1, splits)[:, j].mean()) for j in range(splits)],
            "end_single_program_sms_us": [float(end[v[0]]) for v in per_sm.values() if len(v) == 1]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/results")
    p.add_argument("--reps", type=int, default=6)
    args = p.parse_args()
    T, splits, bt = 8192, 8, 128
    sets = make_sets(1, H, H, T, D, ("int8",), n=3)
    stamps = torch.zeros(H * splits * 3, dtype=torch.int64, device="cuda")
    ws = workspace(sets[0]["q"].device, 1, H, splits, D)
    records = []
    nbytes = quant_decode_bytes(1, H, H, T, D, "int8")
    shape = {"B": 1, "Hq": H, "Hkv": H, "T": T, "D": D}
    for loads_only in (False, True):
        name = "loads only" if loads_only else "int8 kernel"
        for rep in range(args.reps + 2):
            s = sets[rep % len(sets)]
            k, v = s["int8"]
            _timed_kernel[(H, splits)](s["q"], k.data, v.data, k.scale, v.scale, *ws, stamps, LOG2E / math.sqrt(D),
                                       T, splits, HEAD_DIM=D, BLOCK_T=bt, NUM_STAGES=3, LOADS_ONLY=loads_only,
                                       num_warps=4)
            torch.cuda.synchronize()
            if rep < 2:  # warm-up
                continue
            summary = summarise(stamps, splits)
            records.append(Record(name, shape, "int8", nbytes, None, None, None,
                                  dict(block_t=bt, warps=4, stages=3, splits=splits, **summary)))
            print(name, json.dumps({k: (round(v, 2) if isinstance(v, float) else
                                        [round(x, 2) for x in v] if isinstance(v, list) else v)
                                    for k, v in summary.items()}), flush=True)
    print("wrote", save_records(records, "quant-b1-timeline", run_meta(), Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
