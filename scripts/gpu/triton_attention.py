"""Triton decode attention on a GPU: correctness, CUDA-graph capture, a tuning sweep, the targets.

    PYTHONPATH=. python scripts/gpu/triton_attention.py --out DIR [--quick]

1. Correctness (exits 1 on any failure), against the float64 reference over random shapes:
   ``triton_decode`` and ``flash_decode`` (fp16/fp32, bf16 where the GPU has it; D 64/128/256;
   GQA groups 1, 2, 4, 8, 16; T from 1 to 5000 with tile edges; forced and chosen splits,
   including more splits than tiles; ``lengths``; ``rope`` against labkit.rope.apply_rope;
   ``out=`` poisoned with NaN first). Then: no host synchronisation on the hot path
   (``torch.cuda.set_sync_debug_mode("error")``), and a call captured in a CUDA graph and
   replayed on new inputs, new lengths and new positions.
2. Benchmarks (copy roofline measured first; KV rotated past the L2; CUDA events, median):
   fp16 batch 1, 32 heads d=128 (MHA) and 32/8 (GQA), T = 512 … 32768: flash_decode's default
   configuration, the one-pass kernel, and at a few contexts the best of a small sweep over
   BLOCK_T × num_warps × num_stages on both scoring paths (reductions, tl.dot), each at half,
   equal and twice the heuristic's splits (every line printed: hard-code the winners in
   ``kernel_config`` / the heuristic),
   and SDPA's best backend (flash, efficient, cuDNN, math; GQA both expanded and native)
   -> ``triton_attention_<gpu>.json``.
3. The targets, each PASS/MISS (a miss is reported, not fatal): >= 85% of the copy roofline
   at T = 8192 and 90% at 32768; at least as fast as SDPA's best at every T from 2048 to
   32768; >= 1.5x SDPA at T = 2048; GQA 32/8 >= 1.5x SDPA.

In sim mode (no GPU) it runs the same code on tiny sizes, as a smoke test of the script.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import labkit  # noqa: F401  (decides the mode before triton is imported)
import torch
import torch.nn.functional as F

from labkit import runtime
from labkit.attention import reference_decode
from labkit.attention.sdpa import sdpa_decode
from labkit.attention.triton_decode import config_for, default_splits, flash_decode, plan_splits, triton_decode
from labkit.attention.triton_plan import Config
from labkit.attention.validate import bf16_supported
from labkit.bench import Record, copy_roofline_gbps, gbps, rotating, rotation_count, run_meta, save_records
from labkit.bench.timing import time_for_record, time_ms
from labkit.bench.attention import make_decode_inputs
from labkit.attention.reference import decode_bytes
from labkit.checks.core import TOLERANCE, rel_error
from labkit.decoding.graphs import capture
from labkit.rope import apply_rope, rope_tables

DEV = runtime.device()
SIM = runtime.is_sim()
CONTEXTS = (16, 48) if SIM else (512, 2048, 4096, 8192, 16384, 32768)
HEADS = (2, 2) if SIM else (32, 32)  # (Hq, Hkv) of the MHA shape
GQA = (4, 1) if SIM else (32, 8)
D = 128


def sync():
    if not SIM:
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------
# 1. Correctness


def check_random(rng: random.Random, n: int) -> list[str]:
    failures = []
    dtypes = [torch.float16, torch.float32] + ([torch.bfloat16] if bf16_supported() else [])
    edges = [1, 2, 15, 16, 17, 63, 64, 65, 127, 128, 129, 1023, 1025]
    for i in range(n):
        B = rng.randint(1, 2 if SIM else 4)
        Hkv = rng.choice((1, 2) if SIM else (1, 2, 4, 8))
        group = rng.choice((1, 2, 4, 8) if SIM else (1, 2, 3, 4, 8, 16))
        Dh = rng.choice((16, 64) if SIM else (64, 128, 256))
        dtype = rng.choice(dtypes)
        T = rng.choice(edges[:4]) if SIM else (rng.choice(edges) if i % 3 == 0 else rng.randint(1, 5000))
        use_lengths, use_rope = rng.random() < 0.5, rng.random() < 0.5
        splits = rng.choice((None, None, 1, 2, 7, 64))
        impl = rng.choice(("triton", "flash"))
        use_dot = rng.choice((None, False, True)) if group > 1 and Dh >= 16 else None
        if SIM and dtype == torch.bfloat16:
            use_dot = False  # the interpreter computes bf16 tl.dot wrongly
        q, k, v = make_decode_inputs(B, Hkv * group, Hkv, T, Dh, dtype)
        lengths = torch.randint(1, T + 1, (B,), dtype=torch.int32, device=DEV) if use_lengths else None
        rope = None
        q_ref = q
        if use_rope:
            cos, sin = rope_tables(T + 64, Dh, device=DEV)
            pos = torch.randint(0, T + 64, (B,), dtype=torch.int32, device=DEV)
            rope = (cos, sin, pos)
            q_ref = apply_rope(q.double().cpu(), pos.cpu()[:, None], cos.cpu(), sin.cpu())
        out = torch.full_like(q, float("nan"))
        if impl == "triton":
            got = triton_decode(q, k, v, lengths=lengths, rope=rope, out=out, use_dot=use_dot)
        else:
            got = flash_decode(q, k, v, lengths=lengths, rope=rope, num_splits=splits, out=out, use_dot=use_dot)
        sync()
        err = rel_error(got, reference_decode(q_ref, k, v, lengths=lengths))
        line = (f"{impl} B={B} Hq={Hkv * group} Hkv={Hkv} T={T} D={Dh} {str(dtype)[6:]} lengths={use_lengths} "
                f"rope={use_rope} splits={splits if impl == 'flash' else 1} use_dot={use_dot}: rel err {err:.2e}")
        if not err <= TOLERANCE[dtype] or got.data_ptr() != out.data_ptr():
            failures.append(line)
            print("FAIL", line)
    print(f"correctness: {n - len(failures)}/{n} random shapes within tolerance")
    return failures


def check_no_sync_and_graph() -> list[str]:
    """No host sync in a call; a call captured in a CUDA graph replays correctly on new inputs."""
    if SIM:
        print("CUDA graph / sync checks: need a GPU (skipped in sim mode)")
        return []
    failures = []
    B, (Hq, Hkv), T = 4, GQA, 3000
    q, k, v = make_decode_inputs(B, Hq, Hkv, T, D, torch.float16)
    cos, sin = rope_tables(4096, D, device=DEV)
    lengths = torch.randint(1, T + 1, (B,), dtype=torch.int32, device=DEV)
    pos = (lengths - 1).to(torch.int32)
    out = torch.empty_like(q)
    call = lambda: flash_decode(q, k, v, lengths=lengths, rope=(cos, sin, pos), out=out)  # noqa: E731
    call()  # compiles and allocates the workspace outside the capture
    sync()
    torch.cuda.set_sync_debug_mode("error")
    try:
        call()
    except RuntimeError as exc:
        failures.append(f"host synchronisation on the hot path: {exc}")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph, _ = capture(call, warmups=1)
    for trial in range(3):  # new values in the same buffers, then replay
        q.normal_(); k.normal_(); v.normal_()  # noqa: E702
        lengths.copy_(torch.randint(1, T + 1, (B,), dtype=torch.int32, device=DEV))
        pos.copy_(lengths - 1)
        out.fill_(float("nan"))
        graph.replay()
        sync()
        q_ref = apply_rope(q.double().cpu(), pos.cpu()[:, None], cos.cpu(), sin.cpu())
        err = rel_error(out, reference_decode(q_ref, k, v, lengths=lengths))
        if not err <= TOLERANCE[torch.float16]:
            failures.append(f"CUDA graph replay {trial}: rel err {err:.2e}")
    print("no host sync; CUDA graph capture and replay:", "FAIL" if failures else "ok")
    return failures


# ------------------------------------------------------------------------------------------------
# 2. Benchmarks


def timed(fn, sets, warmup, rep):
    """GPU time with the calls captured in a CUDA graph (as a decode engine runs them)."""
    return time_ms(rotating(fn, sets), warmup=warmup, rep=rep, graph=True)


def sdpa_best(sets, expected, gqa: bool, warmup, rep) -> tuple[float | None, str]:
    """The fastest of SDPA's backends (and, with GQA, of expanded vs native grouped KV)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    best, name = None, "none"
    variants = [("default (labkit sdpa_decode)", None, True)]
    for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        if getattr(SDPBackend, backend, None) is None:  # older torch: no cuDNN backend
            continue
        variants.append((backend.lower(), getattr(SDPBackend, backend), True))
        if gqa:
            variants.append((backend.lower() + " enable_gqa", getattr(SDPBackend, backend), False))
    for label, backend, expand in variants:
        def run(q, k, v, backend=backend, expand=expand):
            if backend is None:
                return sdpa_decode(q, k, v)
            with sdpa_kernel([backend]):
                if expand:
                    return sdpa_decode(q, k, v)
                return F.scaled_dot_product_attention(q.unsqueeze(2), k, v, enable_gqa=True).squeeze(2)
        try:
            if not rel_error(run(*sets[0]), expected) <= TOLERANCE[torch.float16]:
                continue
            ms = timed(run, sets, warmup, rep)
        except Exception:  # noqa: BLE001 - a backend that doesn't support this shape
            continue
        if ms is not None and (best is None or ms < best):
            best, name = ms, label
    return best, name


SWEEP_POINTS = {"llama": (2048, 8192, 32768), "llama-gqa": (2048, 8192, 32768)}  # (sim: every context)


def kernel_configs(quick: bool, gqa: bool) -> list[Config]:
    """Configurations around the default: tiles × warps × stages, on both scoring paths."""
    def dot(stages):  # the tensor-core path: K/V tiles feed tl.dot, which Triton pipelines
        return [Config(bt, w, st, use_dot=True, programs_per_sm=4) for bt in (32, 64, 128) for w in (4, 8)
                for st in stages]

    full = (1, 2, 3)
    if gqa:
        return dot((1,) if quick else full) + [Config(32, 4, 1, use_dot=False, programs_per_sm=2),
                                               Config(16, 4, 1, use_dot=False, programs_per_sm=2)]
    configs = [Config(bt, w, st) for bt in (64, 128, 256) for w in (4, 8) for st in ((1,) if quick else full)]
    # quick still tries prefetching (cp.async) for the 4-warp tiles the reduction path takes
    configs += [Config(bt, 4, st) for bt in (128, 256) for st in (2, 3)] if quick else []
    # one head padded to 16 rows: 16x the multiply-adds and not a byte more read (the sm_90 default)
    return configs + dot((1, 2) if quick else full)


def sweep(fn_for, sets, expected, T, Hq, Hkv, quick, warmup, rep, where) -> tuple | None:
    """Best (ms, Config, splits): every kernel configuration at its heuristic split count and at
    half and twice that; each line printed, so the defaults can be chosen from the log."""
    def measure(cfg, splits):
        fn = fn_for(cfg, splits)
        try:
            if rel_error(fn(*sets[0]), expected) > TOLERANCE[torch.float16]:
                print(f"FAIL sweep {cfg} splits={splits} at {where}")
                return None
            return timed(fn, sets, warmup, rep)
        except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory for this tile size
            print(f"  skip {cfg} splits={splits}: {type(exc).__name__}: {str(exc)[:120]}")
            return None

    results = []
    for cfg in kernel_configs(quick, Hq != Hkv):
        s0 = plan_splits(1, Hq, Hkv, T, cfg)
        for s in sorted({max(1, s0 // 2), s0, min(64, 2 * s0)}):
            s = plan_splits(1, Hq, Hkv, T, cfg, num_splits=s)
            ms = measure(cfg, s)
            if ms is not None:
                results.append((ms, cfg, s))
                print(f"  sweep {where}: {cfg} splits={s}: {ms * 1e3:.1f} µs")
    return min(results, key=lambda x: x[0]) if results else None


def bench(roofline: float | None, quick: bool) -> list[Record]:
    warmup, rep = (5, 10) if quick else (10, 20)
    records = []
    for name, (Hq, Hkv) in (("llama", HEADS), ("llama-gqa", GQA)):
        for T in CONTEXTS:
            nbytes = decode_bytes(1, Hq, Hkv, T, D, 2)
            sets = [make_decode_inputs(1, Hq, Hkv, T, D, torch.float16) for _ in range(rotation_count(nbytes))]
            expected = reference_decode(*sets[0])
            shape = {"B": 1, "Hq": Hq, "Hkv": Hkv, "T": T, "D": D}
            out = torch.empty_like(sets[0][0])

            def rec(kernel, ms, **extra):
                bw = gbps(nbytes, ms)
                pct = 100 * bw / roofline if bw and roofline else None
                records.append(Record(kernel, dict(shape), "float16", nbytes, ms, bw, pct, {"shape": name, **extra}))

            cfg0 = config_for(D, Hq // Hkv, T)  # what flash_decode picks
            s0 = default_splits(1, Hq, Hkv, T, D)
            err = rel_error(flash_decode(*sets[0], out=out), expected)
            if err > TOLERANCE[torch.float16]:
                print(f"FAIL flash_decode default at {name} T={T}: rel err {err:.2e}")
            ms, timing = time_for_record(rotating(lambda q, k, v: flash_decode(q, k, v, out=out), sets),
                                         warmup=warmup, rep=rep)
            rec("triton_splitk", ms, config=str(cfg0), num_splits=s0, rel_error=err, **timing)
            ms, timing = time_for_record(rotating(lambda q, k, v: triton_decode(q, k, v, out=out), sets),
                                         warmup=warmup, rep=rep)
            rec("triton", ms, config=str(config_for(D, Hq // Hkv, T, short_context=False)), num_splits=1, **timing)
            if SIM or T in SWEEP_POINTS[name]:
                def fn_for(cfg, splits):
                    return lambda q, k, v: flash_decode(q, k, v, out=out, block_t=cfg.block_t, num_warps=cfg.num_warps,
                                                        num_stages=cfg.num_stages, use_dot=cfg.use_dot,
                                                        num_splits=splits)
                best = sweep(fn_for, sets, expected, T, Hq, Hkv, quick, warmup, rep, f"{name} T={T}")
                if best and best[0] is not None:
                    rec("triton_splitk_best", best[0], config=str(best[1]), num_splits=best[2])
            ms, backend = sdpa_best(sets, expected, Hq != Hkv, warmup, rep)
            rec("sdpa_best", ms, backend=backend)
            ms, timing = time_for_record(rotating(sdpa_decode, sets), warmup=warmup, rep=rep)
            rec("sdpa", ms, **timing)
            del sets
            if not SIM:
                torch.cuda.empty_cache()
    return records


# ------------------------------------------------------------------------------------------------
# 3. Summary and targets


def summary(records: list[Record]) -> None:
    by = {(r.extra["shape"], r.shape["T"], r.kernel): r for r in records}
    print(f"\n{'shape':<10}{'T':>6} {'kernel':<19}{'µs':>9}{'GB/s':>8}{'%roof':>7}{'vs SDPA best':>13}  config")
    for r in records:
        sd = by.get((r.extra["shape"], r.shape["T"], "sdpa_best"))
        vs = f"{sd.time_ms / r.time_ms:12.2f}×" if r.time_ms and sd and sd.time_ms else f"{'—':>13}"
        cfg = (f"{r.extra['config']} splits={r.extra['num_splits']}" if "config" in r.extra
               else r.extra.get("backend", ""))
        t = f"{r.time_ms * 1e3:9.1f}" if r.time_ms else f"{'—':>9}"
        bw = f"{r.gbps:8.0f}" if r.gbps else f"{'—':>8}"
        pct = f"{r.pct_roofline:7.1f}" if r.pct_roofline else f"{'—':>7}"
        print(f"{r.extra['shape']:<10}{r.shape['T']:>6} {r.kernel:<19}{t}{bw}{pct}{vs}  {cfg}")
    if SIM:
        print("\ntargets: need a GPU (sim mode)")
        return

    def target(text, ok, detail):
        print(f"  [{'PASS' if ok else 'MISS'}] {text}: {detail}")

    for kernel in ("triton_splitk", "triton_splitk_best"):
        get = lambda shape, T: by.get((shape, T, kernel))  # noqa: E731
        sd = lambda shape, T: by.get((shape, T, "sdpa_best"))  # noqa: E731
        print(f"\ntargets for {kernel} ({'the default configuration' if kernel == 'triton_splitk' else 'the best swept configuration'}),"
              " fp16, batch 1, 32 heads, d=128, KV rotated past the L2:")
        for T, want in ((8192, 85.0), (32768, 90.0)):
            r = get("llama", T)
            target(f">= {want:.0f}% of the copy roofline at T = {T}", r and r.pct_roofline and r.pct_roofline >= want,
                   f"{r.pct_roofline:.1f}%" if r and r.pct_roofline else "not measured")
        ratios = {T: sd("llama", T).time_ms / get("llama", T).time_ms for T in CONTEXTS
                  if 2048 <= T <= 32768 and get("llama", T) and sd("llama", T) and sd("llama", T).time_ms}
        target("at least as fast as SDPA's best backend at every T from 2048 to 32768",
               bool(ratios) and min(ratios.values()) >= 1.0, ", ".join(f"T={T}: {x:.2f}×" for T, x in ratios.items()))
        target(">= 1.5x SDPA's best at T = 2048", ratios.get(2048, 0) >= 1.5, f"{ratios.get(2048, 0):.2f}×")
        gqa = {T: sd("llama-gqa", T).time_ms / get("llama-gqa", T).time_ms for T in CONTEXTS
               if get("llama-gqa", T) and sd("llama-gqa", T) and sd("llama-gqa", T).time_ms}
        target("GQA 32/8: >= 1.5x SDPA's best (T from 2048)", bool(gqa) and min(x for T, x in gqa.items() if T >= 2048) >= 1.5,
               ", ".join(f"T={T}: {x:.2f}×" for T, x in gqa.items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/results", help="folder for the JSON results")
    ap.add_argument("--quick", action="store_true", help="fewer random shapes and a smaller sweep")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    t0 = time.time()
    print(runtime.summary())
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    failures = check_random(rng, 12 if SIM else (30 if args.quick else 60))
    failures += check_no_sync_and_graph()
    roofline = copy_roofline_gbps()
    print(f"copy roofline: {roofline:.0f} GB/s" if roofline else "copy roofline: needs a GPU")
    records = bench(roofline, args.quick or SIM)
    summary(records)
    if not SIM:
        path = save_records(records, "triton_attention", run_meta(roofline), args.out)
        print(f"\nrecords -> {path}")
    print(f"\n{len(failures)} correctness failure(s); {time.time() - t0:.0f} s")
    for line in failures:
        print("FAILED", line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
