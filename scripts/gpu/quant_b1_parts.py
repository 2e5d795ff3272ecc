"""Where batch 1 at 8k tokens spends its time (issue #23): the int8 kernel as shipped, without its
merge, and a kernel with the same grid, tiles, warps and pipeline that only streams the 8-bit K/V
and their scales (no conversion, no dot, no softmax), beside loads-only kernels of 64- and
128-token tiles with 4 warps. 32 heads, d = 128, CUDA graphs, KV rotated past the L2. Prints
microseconds; writes ``quant-b1-parts_<gpu>.json``.

    LABKIT_MODE=gpu PYTHONPATH=. python scripts/gpu/quant_b1_parts.py --out data/results [--splits 0 16]

The 2026-12-06 H100 record (``data/results/h100/quant-b1-parts_*.json``) was taken with the
4-warp plan, 8 and 16 splits, and loads-only settings (128, 3), (64, 3) and (128, 2).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import triton
import triton.language as tl

from labkit.attention import decode_bytes
from labkit.attention.quant_decode import quant_flash_decode
from labkit.attention.splits import LOG2E
from labkit.attention.triton_decode import flash_decode
from labkit.attention.triton_plan import plan_splits, workspace
from labkit.attention.triton_quant import _quant_attend_kernel, quant_config_for, quant_constexprs
from labkit.bench.quant import D, H, make_sets
from labkit.bench.records import Record, run_meta, save_records
from labkit.bench.timing import copy_roofline_gbps, gbps, rotating, time_ms
from labkit.kvcache.quant import quant_decode_bytes


@triton.jit
def _stream_kernel(K, V, KS, VS, Out, T, num_splits, HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr,
                   NUM_STAGES: tl.constexpr):
    # The shipped kernel's grid and loads (whole tiles, pointers stepped a tile), nothing else:
    # an elementwise max keeps every load alive at one instruction per register.
    pid = tl.program_id(0)
    split = tl.program_id(1)
    # T a multiple of BLOCK_T; the last split may hold fewer tiles (none past the sequence)
    per_split = tl.cdiv(T // BLOCK_T, num_splits)
    tiles = tl.maximum(tl.minimum(per_split, T // BLOCK_T - split * per_split), 0)
    row0 = pid.to(tl.int64) * T + split * per_split * BLOCK_T
    offs_t = tl.arange(0, BLOCK_T)
    offs = (row0 + offs_t)[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
    k_ptrs, v_ptrs, ks_ptrs, vs_ptrs = K + offs, V + offs, KS + row0 + offs_t, VS + row0 + offs_t
    acc = tl.zeros([BLOCK_T, HEAD_DIM], dtype=tl.int8)
    sc = tl.zeros([BLOCK_T], dtype=tl.float32)
    for _ in tl.range(0, tiles, num_stages=NUM_STAGES):
        acc = tl.maximum(acc, tl.maximum(tl.load(k_ptrs), tl.load(v_ptrs)))
        sc = tl.maximum(sc, tl.maximum(tl.load(ks_ptrs), tl.load(vs_ptrs)))
        k_ptrs += BLOCK_T * HEAD_DIM
        v_ptrs += BLOCK_T * HEAD_DIM
        ks_ptrs += BLOCK_T
        vs_ptrs += BLOCK_T
    tl.store(Out + (pid * num_splits + split), tl.max(tl.max(acc, axis=1).to(tl.float32) + sc, axis=0))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/results")
    p.add_argument("--T", type=int, default=8192)
    p.add_argument("--splits", type=int, nargs="+", default=[0, 16], help="0: the plan's count")
    args = p.parse_args()
    if args.T % 128:
        p.error(f"--T must be a multiple of 128 (whole tiles for the loads-only kernels), got {args.T}")
    T, roof = args.T, copy_roofline_gbps()
    shape = {"B": 1, "Hq": H, "Hkv": H, "T": T, "D": D}
    sets = make_sets(1, H, H, T, D, ("int8",))
    args8 = [(s["q"], *s["int8"], torch.empty_like(s["q"])) for s in sets]
    nbytes = quant_decode_bytes(1, H, H, T, D, "int8")
    records = []

    def add(name, ms, dtype="int8", b=nbytes, **extra):
        records.append(Record(name, shape, dtype, b, ms, gbps(b, ms), 100 * gbps(b, ms) / roof, extra))
        print(f"{ms * 1e3:7.1f} us {gbps(b, ms):6.0f} GB/s  {name} {extra}", flush=True)

    fp = [(s["q"], s["k"], s["v"]) for s in sets]
    add("fp16 flash_decode", time_ms(rotating(lambda q, k, v: flash_decode(q, k, v), fp), graph=True), "float16",
        decode_bytes(1, H, H, T, D, 2))
    add("int8 shipped", time_ms(rotating(lambda q, k, v, o: quant_flash_decode(q, k, v, out=o), args8), graph=True))
    cfg = quant_config_for(D, 1, T)
    for splits in [sp or plan_splits(1, H, H, T, cfg) for sp in args.splits]:
        sink = torch.empty(H * splits, device=sets[0]["q"].device)
        meta = quant_constexprs(H, 1, D, cfg, bs=1, has_lengths=False, split=True, paged=False)

        def attend(q, k, v, o, splits=splits, meta=meta):
            ws = workspace(q.device, 1, H, splits, D)
            _quant_attend_kernel[(H, splits)](q, k.data, v.data, k.scale, v.scale, q, q, o, *ws,
                                              LOG2E / math.sqrt(D), T, splits, 0, **meta, num_warps=cfg.num_warps)

        add("int8 kernel without the merge", time_ms(rotating(attend, args8), graph=True), splits=splits)
        for bt, st, w in ((cfg.block_t, cfg.num_stages, cfg.num_warps), (64, 3, 4), (128, 3, 4)):
            def stream(q, k, v, o, splits=splits, bt=bt, st=st, w=w, sink=sink):
                _stream_kernel[(H, splits)](k.data, v.data, k.scale, v.scale, sink, T, splits, HEAD_DIM=D,
                                            BLOCK_T=bt, NUM_STAGES=st, num_warps=w)

            add("loads only", time_ms(rotating(stream, args8), graph=True), splits=splits, block_t=bt, stages=st,
                warps=w)
    print("wrote", save_records(records, "quant-b1-parts", run_meta(roof), Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
