"""Naive three-pass attention and the fused Numba kernel on a GPU: correctness, then benchmarks.

    PYTHONPATH=. python scripts/gpu/numba_attention.py --out DIR [--quick]

1. Correctness (exits 1 on any failure), against the float64 reference over random shapes:
   ``numba_decode`` (fp16/fp32, D 64/128, GQA groups 1 … 8, T from 1 to 10k including
   tile edges, forced and chosen splits, output poisoned with NaN first), ``naive_decode``,
   and notebook 02's exercise kernel (its solution, taken from the master notebook) through
   the exercise's own check. Tolerances: 1e-5 (fp32), 2e-3 (fp16).
2. Benchmarks, copy roofline measured first: GPT-2-small shape (12 heads, d 64, fp32) and
   Llama shape (32 heads, d 128, fp16), batch 1 and 8, contexts 512 … 32768: naive, numba,
   sdpa through ``bench_decode`` (KV rotated past the L2) -> ``numba_attention_<gpu>.json``;
   the naive passes timed one by one -> ``naive_passes_<gpu>.json``; a split-count and
   kernel-shape sweep for tuning -> ``numba_tuning_<gpu>.json``.
3. A summary: the table, and the targets (numba >= 60% of the roofline at T >= 8192 for the
   Llama shape; faster than naive at every context). Missing a target is reported, not fatal.

In sim mode (no GPU) it runs the same code on tiny sizes, as a smoke test of the script.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import labkit  # noqa: F401  (decides the mode before numba is imported)
import torch

from labkit import runtime
from labkit.attention import reference_decode
from labkit.attention.naive import naive_decode
from labkit.attention.numba_fused import GPU_CONFIG, KernelConfig, numba_decode, plan
from labkit.bench import Record, copy_roofline_gbps, gbps, rotating, rotation_count, run_meta, save_records, time_ms
from labkit.bench.attention import bench_decode, make_decode_inputs
from labkit.bench.passes import bench_naive_passes, kernel_launches
from labkit.checks.core import rel_error
from labkit.viz import format_table

ROOT = Path(__file__).resolve().parents[2]
DEV = runtime.device()
SIM = runtime.is_sim()
TOL = {torch.float32: 1e-5, torch.float16: 2e-3}
SHAPES = {  # name -> (Hq, Hkv, D, dtype)
    "gpt2": (12, 12, 64, torch.float32),
    "llama": (32, 32, 128, torch.float16),
}
CONTEXTS = (16, 48) if SIM else (512, 2048, 4096, 8192, 32768)
BATCHES = (1, 2) if SIM else (1, 8)
CHECK_ELEMENTS = 1 << 28  # above this many K elements, bench_decode skips its float64 check (host memory)


def check_numba(rng: random.Random, n: int) -> list[str]:
    failures = []
    edges = [1, 2, 31, 32, 33, 63, 64, 65, 255, 257]
    for i in range(n):
        B = rng.randint(1, 2 if SIM else 3)
        Hkv = rng.choice((1, 2) if SIM else (1, 2, 4, 8, 12, 32))
        group = rng.choice((1, 2, 3, 4, 6, 8)) if Hkv <= 8 else 1  # at most 64 query heads: the CPU reference is slow
        D = rng.choice((64, 128))
        dtype = rng.choice((torch.float16, torch.float32))
        T = rng.choice(edges) if i % 3 == 0 else rng.randint(1, 40 if SIM else 8_000)
        splits = rng.choice((None, None, 1, 2, 7)) if T > 1 else None
        q, k, v = make_decode_inputs(B, Hkv * group, Hkv, T, D, dtype)
        out = torch.full_like(q, float("nan"))
        got = numba_decode(q, k, v, splits=splits, out=out)
        if not SIM:
            torch.cuda.synchronize()
        err = rel_error(got, reference_decode(q, k, v))
        p = plan(B, Hkv * group, Hkv, T, splits=splits)
        line = (f"numba B={B} Hq={Hkv * group} Hkv={Hkv} T={T} D={D} {str(dtype)[6:]} splits={p.splits} "
                f"heads/block={p.heads_per_block}: rel err {err:.2e}")
        if not err <= TOL[dtype] or got.data_ptr() != out.data_ptr():
            failures.append(line)
            print("FAIL", line)
    print(f"numba_decode: {n - len(failures)}/{n} random shapes within tolerance")
    return failures


def check_naive(rng: random.Random, n: int) -> list[str]:
    failures = []
    for _ in range(n):
        B, Hkv, group = rng.randint(1, 4), rng.choice((1, 2, 8, 12)), rng.choice((1, 2, 4))
        D, dtype, T = rng.choice((16, 64, 128)), rng.choice((torch.float16, torch.float32)), rng.randint(1, 5000)
        q, k, v = make_decode_inputs(B, Hkv * group, Hkv, T, D, dtype)
        err = rel_error(naive_decode(q, k, v), reference_decode(q, k, v))
        if not err <= TOL[dtype]:
            failures.append(f"naive B={B} Hq={Hkv * group} Hkv={Hkv} T={T} D={D} {dtype}: rel err {err:.2e}")
            print("FAIL", failures[-1])
    print(f"naive_decode: {n - len(failures)}/{n} random shapes within tolerance")
    return failures


def check_exercise() -> list[str]:
    from labkit.checks import nb02

    fused_decode, tile = nb02.load_solution()
    try:
        nb02.check_fused_kernel(fused_decode, block=tile)
    except AssertionError as exc:
        return [f"notebook 02 exercise kernel: {exc}"]
    return []


def benchmarks(roof: float | None) -> list[Record]:
    records = []
    for name, (Hq, Hkv, D, dtype) in SHAPES.items():
        D = 64 if SIM else D
        for B in BATCHES:
            for T in CONTEXTS:
                check = B * Hkv * T * D <= CHECK_ELEMENTS
                recs = bench_decode(["naive", "numba", "sdpa"], B=B, Hq=Hq, Hkv=Hkv, T=T, D=D, dtype=dtype,
                                    roofline_gbps=roof, check=check)
                for r in recs:
                    r.extra["shape"] = name
                    if r.kernel == "numba":
                        r.extra["splits"] = plan(B, Hq, Hkv, T).splits
                records += recs
                line = "  ".join(f"{r.kernel} {r.time_ms * 1e3:7.1f} µs {r.gbps:6.0f} GB/s" for r in recs
                                 if r.time_ms is not None)
                print(f"{name} B={B} T={T}: {line or 'checked (sim: no timings)'}", flush=True)
    return records


def naive_pass_records(roof: float | None) -> list[Record]:
    records = []
    for name, (Hq, Hkv, D, dtype) in SHAPES.items():
        D = 64 if SIM else D
        for T in CONTEXTS:
            recs = bench_naive_passes(B=1, Hq=Hq, Hkv=Hkv, T=T, D=D, dtype=dtype, roofline_gbps=roof)
            for r in recs:
                r.extra["shape"] = name
            records += recs
    q, k, v = make_decode_inputs(1, 32, 32, CONTEXTS[-1], 64 if SIM else 128, torch.float16)
    names, source = kernel_launches(lambda: naive_decode(q, k, v))
    print(f"naive launches ({source}): {len(names)}: " + ", ".join(n[:60] for n in names))
    if not SIM:  # the simulator's launches are not PyTorch ops: nothing to count in sim mode
        names, source = kernel_launches(lambda: numba_decode(q, k, v))
        print(f"numba launches ({source}): {len(names)}: " + ", ".join(n[:60] for n in names))
    return records


def tuning(roof: float | None) -> list[Record]:
    """Time numba_decode over split counts and kernel shapes (Llama shape, batch 1), for tuning the defaults."""
    records = []
    configs = [GPU_CONFIG, KernelConfig(16, 128, 4, 8, 2), KernelConfig(32, 128, 4, 8, 2),
               KernelConfig(32, 128, 4, 8, 2, 128), KernelConfig(32, 256, 4, 8, 2, 128)]
    for T in ((48,) if SIM else (512, 8192)):
        D = 64 if SIM else 128
        nbytes = 2 * 2 * 32 * T * D + 2 * 2 * 32 * D
        sets = [make_decode_inputs(1, 32, 32, T, D, torch.float16) for _ in range(rotation_count(nbytes))]
        expected = reference_decode(*sets[0])
        for cfg in configs:
            err = rel_error(numba_decode(*sets[0], config=cfg), expected)
            if not err <= TOL[torch.float16]:
                raise AssertionError(f"numba_decode with {cfg} at T={T}: relative error {err:.2e}")
            for splits in ((None, 1, 4, 8, 16, 32, 64) if cfg == GPU_CONFIG else (None,)):
                if splits and splits * cfg.tile > T:
                    continue
                p = plan(1, 32, 32, T, splits=splits, cfg=cfg)
                ms = time_ms(rotating(lambda q, k, v: numba_decode(q, k, v, splits=splits, config=cfg), sets))
                bw = gbps(nbytes, ms)
                records.append(Record("numba", {"B": 1, "Hq": 32, "Hkv": 32, "T": T, "D": D}, "float16", nbytes, ms, bw,
                                      100 * bw / roof if bw and roof else None,
                                      {"splits": p.splits, "chosen": splits is None, "tile": cfg.tile,
                                       "threads": cfg.threads, "max_registers": cfg.max_registers}))
                if ms is not None:
                    print(f"tune T={T} tile={cfg.tile} threads={cfg.threads} maxreg={cfg.max_registers} "
                          f"splits={p.splits}"
                          f"{' (chosen)' if splits is None else ''}: {ms * 1e3:7.1f} µs {bw:6.0f} GB/s")
        del sets
    return records


def host_overhead() -> None:
    """Host time per call (launches queued back to back, one sync at the end): above the GPU time,
    a benchmark measures Python, not the kernel."""
    if SIM:
        return
    q, k, v = make_decode_inputs(1, 32, 32, 512, 128, torch.float16)
    from labkit.attention.sdpa import sdpa_decode

    one_launch = lambda q, k, v: numba_decode(q, k, v, splits=1)  # noqa: E731  (no merge: one launch)
    for name, fn in (("naive", naive_decode), ("numba", numba_decode), ("numba splits=1", one_launch),
                     ("sdpa", sdpa_decode)):
        fn(q, k, v)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(200):
            fn(q, k, v)
        torch.cuda.synchronize()
        print(f"host time per call, {name} (Llama shape, T=512): {(time.perf_counter() - t) / 200 * 1e6:.1f} µs")


def kernel_resources() -> None:
    """Registers and static shared memory of every Numba kernel this run compiled (launch specializations)."""
    from labkit.numba_bridge import _SPECIALIZED

    for key, spec in _SPECIALIZED.items():
        kinds = ", ".join(f"{k[1]}".replace("torch.", "") for k in key[1:] if isinstance(k, tuple))
        print(f"  {spec.py_func.__name__:14s} [{kinds}]: {spec.get_regs_per_thread()} registers/thread, "
              f"{spec.get_shared_mem_per_block()} B shared/block")


def targets(records: list[Record]) -> list[str]:
    by = {(r.extra.get("shape"), r.shape["B"], r.shape["T"], r.kernel): r for r in records}
    lines = []
    for (name, B, T, kernel), r in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3])):
        if kernel != "numba" or r.time_ms is None:
            continue
        naive, sdpa = by.get((name, B, T, "naive")), by.get((name, B, T, "sdpa"))
        faster = naive is not None and r.time_ms < naive.time_ms
        line = (f"{name:5s} B={B} T={T:5d}: numba {r.pct_roofline:5.1f}% of roofline, "
                f"{naive.time_ms / r.time_ms:5.2f}x naive, {sdpa.time_ms / r.time_ms:5.2f}x sdpa"
                f"{'' if faster else '  <- MISS: not faster than naive'}")
        if name == "llama" and T >= 8192 and B == 1:
            line += "  (target >= 60%: " + ("met" if r.pct_roofline >= 60 else "MISSED") + ")"
        lines.append(line)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "data" / "results"), help="folder for the JSON results")
    ap.add_argument("--quick", action="store_true", help="fewer random shapes, no tuning sweep")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    t0 = time.time()
    print(runtime.summary(), f"seed {seed}")
    failures = check_numba(rng, 8 if SIM else (25 if args.quick else 60))
    failures += check_naive(rng, 4 if SIM else 30)
    failures += check_exercise()
    print(f"correctness: {len(failures)} failure(s) ({time.time() - t0:.0f} s)", flush=True)

    roof = copy_roofline_gbps()
    print(f"copy roofline: {roof:.0f} GB/s" if roof else "copy roofline: sim mode, not measured")
    meta = run_meta(roof)
    host_overhead()
    records = benchmarks(roof)
    print("saved", save_records(records, "numba_attention", meta, args.out))
    passes = naive_pass_records(roof)
    print("saved", save_records(passes, "naive_passes", meta, args.out))
    if not args.quick:
        print("saved", save_records(tuning(roof), "numba_tuning", meta, args.out))

    print()
    print(format_table(records))
    print()
    print(format_table(passes, baselines=()))
    print()
    print("\n".join(targets(records)))
    if not SIM:
        print("compiled Numba kernels:")
        kernel_resources()
    print(f"done in {time.time() - t0:.0f} s; correctness failures: {len(failures)}")
    for f in failures:
        print("  ", f[:2000])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
