"""Balanced work (stream-K) against flash-decoding's split for the int8 kernel (issue #23).

Checks the balanced kernel against the float64 reference on shapes that divide no tile, then
times, at batch 1, 32 heads, d = 128, 8k tokens: the fp16 kernel, the shipped int8 kernel, the
balanced kernel over programs (1-4 per SM) and tiles, and a kernel with the balanced ranges that
only loads the bytes. Then the shipped kernel beside the best balanced settings at batch 1 and
8, 2k-32k. CUDA graphs, KV rotated past the L2. Writes ``<name>_<gpu>.json`` after each part.

    LABKIT_MODE=gpu PYTHONPATH=. python scripts/gpu/quant_stream.py --out data/results
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
from labkit.attention.quant_stream import stream_launch, stream_programs
from labkit.attention.splits import sm_count
from labkit.attention.triton_decode import flash_decode
from labkit.attention.triton_quant import quant_config_for
from labkit.bench.quant import D, H, _reference_dequantized, make_sets
from labkit.bench.records import Record, run_meta, save_records
from labkit.bench.timing import copy_roofline_gbps, gbps, rotating, time_ms
from labkit.kvcache.quant import quant_decode_bytes, quantize


@triton.jit
def _stream_loads_kernel(K, V, KS, VS, Out, tiles_per_row, total_tiles, HEAD_DIM: tl.constexpr,
                         BLOCK_T: tl.constexpr, NUM_STAGES: tl.constexpr):
    # The balanced kernel's ranges (T a multiple of BLOCK_T, so a range is contiguous across
    # rows) and loads, nothing else: an elementwise max keeps every load alive.
    pid = tl.program_id(0).to(tl.int64)
    g0 = pid * total_tiles // tl.num_programs(0)
    g1 = (pid + 1) * total_tiles // tl.num_programs(0)
    offs_t = tl.arange(0, BLOCK_T)
    row0 = g0 * BLOCK_T
    offs = (row0 + offs_t)[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
    k_ptrs, v_ptrs, ks_ptrs, vs_ptrs = K + offs, V + offs, KS + row0 + offs_t, VS + row0 + offs_t
    acc = tl.zeros([BLOCK_T, HEAD_DIM], dtype=tl.int8)
    sc = tl.zeros([BLOCK_T], dtype=tl.float32)
    for _ in tl.range(g0, g1, num_stages=NUM_STAGES):
        acc = tl.maximum(acc, tl.maximum(tl.load(k_ptrs), tl.load(v_ptrs)))
        sc = tl.maximum(sc, tl.maximum(tl.load(ks_ptrs), tl.load(vs_ptrs)))
        k_ptrs += BLOCK_T * HEAD_DIM
        v_ptrs += BLOCK_T * HEAD_DIM
        ks_ptrs += BLOCK_T
        vs_ptrs += BLOCK_T
    tl.store(Out + pid, tl.max(tl.max(acc, axis=1).to(tl.float32) + sc, axis=0))


def check(sms: int) -> list[str]:
    """The balanced kernel against the float64 reference (poisoned output), odd shapes and GQA."""
    failures = []
    for B, Hq, Hkv, T, D_, bt, P in ((1, 32, 32, 8191, 128, 128, 264), (3, 8, 2, 1000, 128, 64, 50),
                                      (2, 12, 4, 77, 64, 64, 300), (1, 4, 4, 5, 128, 128, 264),
                                      (8, 32, 32, 2049, 128, 128, 528)):
        q = torch.randn(B, Hq, D_, device="cuda", dtype=torch.float16)
        k = quantize(torch.randn(B, Hkv, T, D_, device="cuda", dtype=torch.float16), "int8")
        v = quantize(torch.randn(B, Hkv, T, D_, device="cuda", dtype=torch.float16), "int8")
        cfg = quant_config_for(D_, Hq // Hkv, T, block_t=bt)
        out = torch.full_like(q, float("nan"))
        stream_launch(q, k, v, out, scale=1 / math.sqrt(D_), cfg=cfg, sms=sms, programs=P)
        err = float((out.double() - _reference_dequantized(q, k, v)).abs().max())
        ok = math.isfinite(err) and err < 2e-3
        print(f"check B={B} Hq={Hq} Hkv={Hkv} T={T} D={D_} tile={bt} P={P}: {err:.2e} {'ok' if ok else 'FAIL'}",
              flush=True)
        if not ok:
            failures.append(f"{B},{Hq},{Hkv},{T},{D_}")
    return failures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/results")
    p.add_argument("--name", default="quant-stream")
    p.add_argument("--check-only", action="store_true", help="the correctness check alone (for compute-sanitizer)")
    args = p.parse_args()
    if args.check_only:
        return 1 if check(sm_count()) else 0
    sms, roof = sm_count(), copy_roofline_gbps()
    meta = run_meta(roof)
    records: list[Record] = []
    failures = check(sms)
    meta["check_failures"] = failures

    def add(name, shape, ms, dtype="int8", nbytes=None, **extra):
        b = nbytes or quant_decode_bytes(shape["B"], H, H, shape["T"], D, "int8")
        records.append(Record(name, shape, dtype, b, ms, gbps(b, ms), 100 * gbps(b, ms) / roof, extra))
        print(f"{shape['B']} {shape['T']:6d} {ms * 1e3:7.1f} us {100 * gbps(b, ms) / roof:5.1f}%  {name} {extra}",
              flush=True)
        return ms

    def stream_fn(cfg, P):
        return lambda q, k, v, o: stream_launch(q, k, v, o, scale=1 / math.sqrt(D), cfg=cfg, sms=sms, programs=P)

    def shipped(q, k, v, o):
        return quant_flash_decode(q, k, v, out=o)

    # Part 1: batch 1, 8k tokens.
    T, shape = 8192, {"B": 1, "Hq": H, "Hkv": H, "T": 8192, "D": D}
    sets = make_sets(1, H, H, T, D, ("int8",))
    a8 = [(s["q"], *s["int8"], torch.empty_like(s["q"])) for s in sets]
    add("fp16 flash_decode", shape, time_ms(rotating(lambda q, k, v: flash_decode(q, k, v),
                                                     [(s["q"], s["k"], s["v"]) for s in sets]), graph=True),
        "float16", decode_bytes(1, H, H, T, D, 2))
    add("int8 split (shipped)", shape, time_ms(rotating(shipped, a8), graph=True))
    found = []
    for bt, w, st in ((128, 4, 3), (64, 4, 3), (64, 4, 4), (128, 8, 3), (64, 8, 3)):
        cfg = quant_config_for(D, 1, T, block_t=bt, num_warps=w, num_stages=st)
        for per_sm in (1, 2, 3, 4):
            try:
                ms = time_ms(rotating(stream_fn(cfg, per_sm * sms), a8), warmup=10, rep=40, graph=True)
            except Exception as exc:  # noqa: BLE001 - a setting that does not fit
                print("fail", bt, w, st, per_sm, type(exc).__name__, str(exc)[:80], flush=True)
                continue
            slots = stream_programs(1, H, 1, T, cfg, sms, per_sm * sms)[3]
            found.append((add("int8 stream", shape, ms, block_t=bt, warps=w, stages=st, programs=per_sm * sms,
                              slots=slots), bt, w, st, per_sm))
    ref = sets[0]["int8"]
    sink = torch.empty(4 * sms, device="cuda")
    for bt, st in ((128, 3), (64, 3)):
        for per_sm in (1, 2, 4):
            P, tpr, total, _ = stream_programs(1, H, 1, T, quant_config_for(D, 1, T, block_t=bt), sms, per_sm * sms)

            def loads(q, k, v, o, bt=bt, st=st, P=P, tpr=tpr, total=total):
                _stream_loads_kernel[(P,)](k.data, v.data, k.scale, v.scale, sink, tpr, total, HEAD_DIM=D,
                                           BLOCK_T=bt, NUM_STAGES=st, num_warps=4)

            add("loads only, balanced", shape, time_ms(rotating(loads, a8), graph=True), block_t=bt, stages=st,
                programs=P)
    del sets, a8, ref
    print("wrote", save_records(records, args.name, meta, Path(args.out)), flush=True)

    # Part 2: the shipped kernel beside the three best balanced settings, batch 1 and 8, 2k-32k.
    best = sorted(found)[:3]
    for B in (1, 8):
        for T in (2048, 8192, 32768):
            shape = {"B": B, "Hq": H, "Hkv": H, "T": T, "D": D}
            sets = make_sets(B, H, H, T, D, ("int8",))
            a8 = [(s["q"], *s["int8"], torch.empty_like(s["q"])) for s in sets]
            add("fp16 flash_decode", shape, time_ms(rotating(lambda q, k, v: flash_decode(q, k, v),
                                                             [(s["q"], s["k"], s["v"]) for s in sets]), graph=True),
                "float16", decode_bytes(B, H, H, T, D, 2))
            add("int8 split (shipped)", shape, time_ms(rotating(shipped, a8), graph=True))
            for _, bt, w, st, per_sm in best:
                cfg = quant_config_for(D, 1, T, block_t=bt, num_warps=w, num_stages=st)
                add("int8 stream", shape, time_ms(rotating(stream_fn(cfg, per_sm * sms), a8), graph=True),
                    block_t=cfg.block_t, warps=w, stages=st, programs=per_sm * sms)
            del sets, a8
            print("wrote", save_records(records, args.name, meta, Path(args.out)), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
