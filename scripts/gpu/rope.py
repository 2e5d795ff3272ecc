"""RoPE fusion on a GPU: correctness over random shapes, then the benchmark and its targets.

    PYTHONPATH=. python scripts/gpu/rope.py --out DIR [--quick]

1. Correctness (exits 1 on any failure), against float64 references over random shapes:
   rope_triton; write_kv_rope into contiguous caches and shuffled paged pools (fp16/fp32/bf16,
   even head dims 2 … 256 (80 and 96 too), positions up to 32k, rope on and off, strided views);
   flash_decode / triton_decode with rope=(cos, sin, positions) (GQA, ragged lengths, forced
   splits); the unfused and fused decode steps.
2. Benchmark (fp16, Llama shape: 32 heads, d = 128; batch 1 and 8; T = 512 … 4096): SDPA and
   flash_decode on a rotated q, flash_decode rotating q itself, the unfused and the fused decode
   step. Saves ``rope_<gpu>.json`` in DIR, prints time / GB/s / % roofline / launches and the
   targets: RoPE inside attention ≤ 1.05× attention alone; fused step ≥ 1.3× faster than the
   unfused step at T ≤ 2048.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import labkit  # noqa: F401  (decides the mode before triton is imported)
import torch

from labkit import runtime
from labkit.attention import reference_decode
from labkit.attention.triton_decode import flash_decode, triton_decode
from labkit.attention.validate import supported_dtypes
from labkit.bench import copy_roofline_gbps, run_meta, save_records
from labkit.bench.rope import bench_rope, format_fusion_summary
from labkit.checks.core import TOLERANCE, rel_error
from labkit.rope.write import write_kv_rope
from labkit.rope import apply_rope, rope_tables
from labkit.rope.fusion import fused_decode_step, reference_decode_step, unfused_decode_step
from labkit.rope.rotate import rope_triton
from labkit.viz import format_table

DEV = runtime.device()
MAX_LEN = 32768
# Even head dims with halves that are and aren't powers of two, and head counts that do and
# don't fill a block; a few values each keep the number of Triton compilations small.
HEAD_DIMS = (2, 16, 64, 80, 96, 128, 256)
HEADS = (1, 5, 8, 32, 40)


def rotated64(x, pos, cos, sin):
    return apply_rope(x.double().cpu(), pos.cpu().long(), cos.double().cpu(), sin.double().cpu())


def check_rope_triton(rng, n):
    failures = []
    for _ in range(n):
        N, H, D, dtype = rng.randint(1, 70), rng.choice(HEADS), rng.choice(HEAD_DIMS), rng.choice(supported_dtypes())
        cos, sin = rope_tables(MAX_LEN, D, device=DEV)
        x = torch.randn(N, H, D, device=DEV).to(dtype)
        pos = torch.randint(0, MAX_LEN, (N,), device=DEV)
        out = rope_triton(x, pos, cos, sin, out=torch.full_like(x, float("nan")))
        err = rel_error(out, rotated64(x, pos[:, None], cos, sin))
        if not err <= TOLERANCE[dtype]:
            failures.append(f"rope_triton N={N} H={H} D={D} {dtype}: relative error {err:.3g}")
    return failures


def check_write(rng, n):
    failures = []
    for _ in range(n):
        H, D, dtype = rng.choice(HEADS), rng.choice(HEAD_DIMS), rng.choice(supported_dtypes())
        rope, paged, strided = rng.random() < 0.8, rng.random() < 0.5, rng.random() < 0.3
        if paged:
            R, S = rng.randint(8, 300), rng.choice([8, 16, 32, 64])
            N = rng.randint(1, min(64, R * S))
            flat = torch.randperm(R * S, device=DEV)[:N]
            rows, slots = flat // S, (flat % S).int()
            pos = torch.randint(0, MAX_LEN, (N,), device=DEV)
        else:
            N, S = rng.randint(1, 16), rng.randint(1, 3000)
            R, rows = N, torch.arange(N, device=DEV)
            pos = slots = torch.randint(0, S, (N,), device=DEV, dtype=torch.int32)
        cos, sin = rope_tables(MAX_LEN, D, device=DEV)
        if strided:
            qkv = torch.randn(N, 3, H, D, device=DEV).to(dtype)
            k_new, v_new = qkv[:, 1], qkv[:, 2]
        else:
            k_new, v_new = (torch.randn(N, H, D, device=DEV).to(dtype) for _ in range(2))
        k_cache = torch.full((R, H, S, D), float("nan"), device=DEV, dtype=dtype)
        v_cache = torch.full_like(k_cache, float("nan"))
        write_kv_rope(k_new, v_new, k_cache, v_cache, rows, slots, (cos, sin, pos) if rope else None)
        want = rotated64(k_new, pos[:, None], cos, sin) if rope else k_new
        s = slots.long()
        err = max(rel_error(k_cache[rows, :, s], want), rel_error(v_cache[rows, :, s], v_new))
        written = int(torch.isfinite(k_cache).sum()) + int(torch.isfinite(v_cache).sum())
        what = f"write_kv_rope N={N} H={H} D={D} {dtype} paged={paged} rope={rope} strided={strided}"
        if not err <= TOLERANCE[dtype]:
            failures.append(f"{what}: relative error {err:.3g}")
        if written != 2 * N * H * D:
            failures.append(f"{what}: {written} cache elements written, expected {2 * N * H * D}")
    return failures


def check_attention(rng, n):
    failures = []
    for _ in range(n):
        (Hkv, group), D = rng.choice([(1, 4), (8, 1), (8, 4), (32, 1)]), rng.choice([64, 128])
        B = rng.randint(1, 8)
        dtype, T = rng.choice(supported_dtypes()), rng.randint(1, 5000)
        cos, sin = rope_tables(MAX_LEN, D, device=DEV)
        q = torch.randn(B, Hkv * group, D, device=DEV).to(dtype)
        k, v = (torch.randn(B, Hkv, T, D, device=DEV).to(dtype) for _ in range(2))
        lengths = torch.randint(1, T + 1, (B,), device=DEV, dtype=torch.int32)
        pos = torch.randint(0, MAX_LEN, (B,), device=DEV, dtype=torch.int32)
        want = reference_decode(rotated64(q, pos[:, None], cos, sin), k, v, lengths=lengths)
        for name, fn, kw in (("flash_decode", flash_decode, dict(num_splits=rng.choice([None, 1, 5]))),
                             ("triton_decode", triton_decode, {})):
            err = rel_error(fn(q, k, v, lengths=lengths, rope=(cos, sin, pos), **kw), want)
            if not err <= TOLERANCE[dtype]:
                failures.append(f"{name} rope B={B} Hq={Hkv * group} Hkv={Hkv} T={T} D={D} {dtype} {kw}: "
                                f"relative error {err:.3g}")
    return failures


def check_steps(rng, n):
    failures = []
    for _ in range(n):
        B, Hkv, group, D = rng.randint(1, 8), rng.choice([4, 8, 32]), rng.choice([1, 4]), 128
        dtype, T = rng.choice([torch.float16, torch.float32]), rng.randint(2, 3000)
        cos, sin = rope_tables(T, D, device=DEV)
        q = torch.randn(B, Hkv * group, D, device=DEV).to(dtype)
        k_new, v_new = (torch.randn(B, Hkv, D, device=DEV).to(dtype) for _ in range(2))
        k_cache, v_cache = (torch.randn(B, Hkv, T, D, device=DEV).to(dtype) for _ in range(2))
        pos = torch.randint(0, T, (B,), device=DEV, dtype=torch.int32)
        out, k_want, _ = reference_decode_step(q, k_new, v_new, k_cache, v_cache, pos, cos, sin)
        for step in (unfused_decode_step, fused_decode_step):
            k_c, v_c = k_cache.clone(), v_cache.clone()
            slot = (torch.arange(B), slice(None), pos.cpu().long())  # the slots the step writes
            err = max(rel_error(step(q, k_new, v_new, k_c, v_c, pos, cos, sin), out),
                      rel_error(k_c.cpu()[slot], k_want[slot]))
            if not err <= TOLERANCE[dtype]:
                failures.append(f"{step.__name__} B={B} Hkv={Hkv} group={group} T={T} {dtype}: error {err:.3g}")
    return failures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/results", help="folder for rope_<gpu>.json")
    p.add_argument("--quick", action="store_true", help="fewer random cases")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(runtime.summary())
    rng = random.Random(args.seed)
    n = 2 if runtime.is_sim() else 10 if args.quick else 40  # sim: a smoke test of this script
    t0 = time.time()
    failures = []
    for name, fn, count in (("rope_triton", check_rope_triton, n), ("write_kv_rope", check_write, 2 * n),
                            ("attention with rope", check_attention, n), ("decode steps", check_steps, n // 2)):
        found = fn(rng, count)
        print(f"correctness: {name}: {count} random cases, {len(found)} failures")
        failures += found
    print(f"correctness sweep: {time.time() - t0:.1f} s")
    for f in failures[:40]:
        print("  FAIL", f)

    roof = copy_roofline_gbps()
    print(f"copy roofline: {roof:.0f} GB/s" if roof else "copy roofline: sim mode, no timings")
    t0 = time.time()
    sizes = {} if runtime.is_sim() else dict(batches=(1, 8), contexts=(512, 1024, 2048, 4096))
    records = bench_rope(dtype=torch.float16, roofline_gbps=roof, **sizes)
    path = save_records(records, "rope", run_meta(roof), directory=args.out)
    print(f"benchmark: {time.time() - t0:.1f} s -> {path}")
    print(format_table(records, baselines=("flash", "sdpa", "unfused step")))
    print()
    print("launches: " + "; ".join(f"{r.kernel} {r.extra['launches']} ({r.extra['launches_from']})"
                                   for r in records if r.shape == records[0].shape))
    print()
    print("targets: RoPE inside attention costs <= 1.05x attention alone; the fused decode step (rotate,")
    print("cache write, attention) is >= 1.3x faster than the unfused one at T <= 2048")
    print(format_fusion_summary(records))
    if failures:
        print(f"{len(failures)} correctness failures")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
