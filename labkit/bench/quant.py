"""Benchmark of the quantized KV cache (notebook 08): the 8-bit flash-decoding kernel beside the
course's fp16 flash-decoding kernel and SDPA's best backend.

Each kernel is checked first (the 8-bit kernels against a float64 reference of the
*dequantized* cache, the fp16 kernels against the fp16 cache's), then timed with CUDA events
through a CUDA graph, over enough input sets that the KV working set is several times the L2.
Every record holds the time, the effective GB/s of the bytes *that kernel* must move (8-bit
data plus scales for the quantized kernels, fp16 for the others), the percent of the copy
roofline measured in the same run, and the speedups over the fp16 kernel and SDPA.

    LABKIT_MODE=gpu python -m labkit.bench.quant --out data/results [--sweep] [--quick]

saves ``quant_<gpu>.json``. ``--sweep`` first times a small grid of tiles, warps and stages
for the 8-bit kernel (recorded as ``sweep`` records). In sim mode it checks the kernels at
tiny sizes and times nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from labkit import runtime
from labkit.attention import decode_bytes, reference_decode
from labkit.attention.sdpa import sdpa_decode
from labkit.attention.triton_decode import flash_decode
from labkit.attention.quant_decode import quant_flash_decode
from labkit.bench.records import Record, run_meta, save_records
from labkit.bench.timing import copy_roofline_gbps, gbps, rotating, rotation_count, time_for_record, time_ms
from labkit.checks.core import TOLERANCE, rel_error
from labkit.kvcache.quant import format_supported, quant_decode_bytes, quantize

H, D = 32, 128  # Llama-2-7B's attention: 32 heads of 128
BATCHES = (1, 8)
CONTEXTS = (2048, 8192, 32768)
SIM_CONTEXTS = (100,)
QUANT_TOLERANCE = 2e-3  # the 8-bit kernels vs the float64 reference of the dequantized cache (fp16 output)


def _reference(q, k, v):
    if runtime.is_sim():
        return reference_decode(q, k, v)
    from labkit.bench.paged import reference_on_device

    return reference_on_device(q, k, v)


def _reference_dequantized(q, k, v) -> torch.Tensor:
    """The float64 answer over the dequantized cache, a sequence at a time (a T4's memory holds
    one sequence's dequantized K/V, not the batch's)."""
    if runtime.is_sim():
        return reference_decode(q, k.dequantize(torch.float64), v.dequantize(torch.float64))
    from labkit.bench.paged import reference_on_device

    return torch.cat([reference_on_device(q[b:b + 1], k.data[b:b + 1].float() * k.scale[b:b + 1, ..., None],
                                          v.data[b:b + 1].float() * v.scale[b:b + 1, ..., None])
                      for b in range(q.shape[0])])


def make_sets(B: int, Hq: int, Hkv: int, T: int, D: int, fmts, *, n: int | None = None) -> list[dict]:
    """``n`` input sets (default: enough to rotate past the L2): fp16 q, k, v and each format's QuantKV."""
    n = n or rotation_count(decode_bytes(B, Hq, Hkv, T, D, 2))
    dev = runtime.device()
    sets = []
    for _ in range(n):
        q = torch.randn(B, Hq, D, device=dev, dtype=torch.float16)
        k = torch.randn(B, Hkv, T, D, device=dev, dtype=torch.float16)
        v = torch.randn(B, Hkv, T, D, device=dev, dtype=torch.float16)
        s = {"q": q, "k": k, "v": v}
        for f in fmts:
            s[f] = (quantize(k, f), quantize(v, f))
        sets.append(s)
    return sets


def sdpa_best(sets, expected, warmup: int, rep: int) -> tuple[float | None, str]:
    """The fastest of SDPA's backends on these sets (flash, efficient, cuDNN, math, default)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    best, name = None, "none"
    variants = [("default", None)] + [(b.lower(), getattr(SDPBackend, b)) for b in
                                      ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
                                      if getattr(SDPBackend, b, None) is not None]
    for label, backend in variants:
        def run(q, k, v, backend=backend):
            if backend is None:
                return sdpa_decode(q, k, v)
            with sdpa_kernel([backend]):
                return sdpa_decode(q, k, v)
        try:
            if not rel_error(run(sets[0]["q"], sets[0]["k"], sets[0]["v"]), expected) <= TOLERANCE[torch.float16]:
                continue
            ms = time_ms(rotating(run, [(s["q"], s["k"], s["v"]) for s in sets]), warmup=warmup, rep=rep,
                         graph=True)
        except Exception:  # noqa: BLE001 - a backend that does not take this shape
            continue
        if ms is not None and (best is None or ms < best):
            best, name = ms, label
    return best, name


SWEEP = [  # (block_t, num_warps, num_stages, use_dot, biased)
    (128, 4, 3, True, True), (128, 4, 3, True, False), (64, 4, 3, True, True), (64, 4, 3, True, False),
    (128, 4, 2, True, True), (128, 4, 4, True, True), (128, 8, 3, True, True), (256, 8, 3, True, True),
    (128, 4, 2, True, False), (64, 4, 4, True, False),
]
SPLITS = (None, 8, 32, 64)  # the plan's split count, then fixed ones (timed for the unbiased entries)


def fp16_kernel_record(B: int, T: int, roofline, warmup=25, rep=100, *, hkv: int = H) -> Record:
    """The fp16 flash-decoding kernel timed alone at one shape (32 query heads over ``hkv`` KV
    heads, D = 128): the baseline a sweep's speedups are taken against (``bench_quant`` times it
    beside SDPA instead)."""
    fp16 = [(s["q"], s["k"], s["v"]) for s in make_sets(B, H, hkv, T, D, ())]
    ms = time_ms(rotating(flash_decode, fp16), warmup=warmup, rep=rep, graph=True)
    nbytes = decode_bytes(B, H, hkv, T, D, 2)
    bw = gbps(nbytes, ms)
    return Record("triton_splitk", {"B": B, "Hq": H, "Hkv": hkv, "T": T, "D": D}, "float16", nbytes, ms, bw,
                  None if not (roofline and bw) else 100 * bw / roofline, {})


def sweep(fmt: str, B: int, T: int, roofline, warmup, rep, settings=None, *, hkv: int = H) -> list[Record]:
    """Time the 8-bit kernel at one shape (32 query heads over ``hkv`` KV heads, D = 128) over
    ``settings``: ``(label, quant_flash_decode keywords)`` pairs, by default :data:`SWEEP` at a
    few split counts.
    Each Record's ``extra`` holds the keywords as ``config`` and the label, if any."""
    if settings is None:
        settings = [(None, dict(block_t=bt, num_warps=w, num_stages=st, use_dot=dot, num_splits=splits,
                                biased=biased))
                    for bt, w, st, dot, biased in SWEEP if not (biased and fmt != "int8")
                    for splits in (SPLITS if not biased else (None,))]
    sets = make_sets(B, H, hkv, T, D, (fmt,))
    args = [(s["q"], *s[fmt]) for s in sets]
    nbytes = quant_decode_bytes(B, H, hkv, T, D, fmt)
    expected = reference_decode(sets[0]["q"].cpu(), sets[0][fmt][0].dequantize(torch.float64).cpu(),
                                sets[0][fmt][1].dequantize(torch.float64).cpu()) if T <= 8192 else None
    out = []
    for label, kw in settings:
        try:
            if expected is not None:
                err = rel_error(quant_flash_decode(*args[0], **kw), expected)
                if not err <= QUANT_TOLERANCE:
                    raise AssertionError(f"rel error {err:.3g}")
            ms = time_ms(rotating(lambda q, k, v: quant_flash_decode(q, k, v, **kw), args), warmup=warmup,
                         rep=rep, graph=True)
        except Exception as exc:  # noqa: BLE001 - a configuration that does not compile or fit
            print(f"  sweep {fmt} B={B} T={T} {kw}: {type(exc).__name__}: {str(exc)[:80]}")
            continue
        bw = gbps(nbytes, ms)
        out.append(Record(f"sweep_{fmt}", {"B": B, "Hq": H, "Hkv": hkv, "T": T, "D": D}, fmt, nbytes, ms, bw,
                          None if not (roofline and bw) else 100 * bw / roofline,
                          {"config": kw, **({"label": label} if label else {})}))
        timed = f"{ms * 1e3:.1f} us ({bw:.0f} GB/s)" if ms is not None else "checked (sim mode: not timed)"
        print(f"  sweep {fmt} B={B} T={T} {label or ''} {kw}: {timed}")
    return out


def bench_quant(*, batches=BATCHES, contexts=None, fmts=None, roofline: float | None = None, warmup: int = 25,
                rep: int = 100, progress: bool = True) -> list[Record]:
    """Check and time the 8-bit kernels, the fp16 flash-decoding kernel and SDPA's best backend.

    Shapes: ``batches`` × ``contexts`` (default :data:`CONTEXTS`, :data:`SIM_CONTEXTS` in sim
    mode) at 32 heads, D = 128, fp16 queries. ``fmts``: the quantized formats (default: int8,
    and fp8 e4m3 where the GPU has it). Returns one Record per kernel and shape; ``extra``
    holds the errors, the speedups over ``triton_splitk`` (fp16) and ``sdpa_best``, and
    SDPA's backend.
    """
    contexts = contexts or (SIM_CONTEXTS if runtime.is_sim() else CONTEXTS)
    fmts = [f for f in (fmts or ("int8", "fp8_e4m3")) if format_supported(f)]
    Hq = Hkv = 2 if runtime.is_sim() else H
    records = []
    for B in batches:
        for T in contexts:
            sets = make_sets(B, Hq, Hkv, T, D, fmts)
            s0 = sets[0]
            expected = _reference(s0["q"], s0["k"], s0["v"])
            shape = {"B": B, "Hq": Hq, "Hkv": Hkv, "T": T, "D": D}
            row = {}
            fp16_bytes = decode_bytes(B, Hq, Hkv, T, D, 2)
            # the fp16 flash-decoding kernel
            err = rel_error(flash_decode(s0["q"], s0["k"], s0["v"]), expected)
            ms, extra = time_for_record(rotating(flash_decode, [(s["q"], s["k"], s["v"]) for s in sets]),
                                        warmup=warmup, rep=rep)
            row["triton_splitk"] = Record("triton_splitk", shape, "float16", fp16_bytes, ms, gbps(fp16_bytes, ms),
                                          extra={"rel_error": err, **extra})
            # SDPA's best backend
            if not runtime.is_sim():
                ms, backend = sdpa_best(sets, expected, warmup, rep)
                row["sdpa_best"] = Record("sdpa_best", shape, "float16", fp16_bytes, ms, gbps(fp16_bytes, ms),
                                          extra={"backend": backend})
            # the 8-bit kernels
            for f in fmts:
                try:
                    row.update(_bench_format(f, sets, expected, shape, warmup, rep))
                except AssertionError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a format that does not compile here: say so, go on
                    print(f"  {f} at {shape}: {type(exc).__name__}: {str(exc)[:200]}")
            base, sdpa = row["triton_splitk"].time_ms, row.get("sdpa_best") and row["sdpa_best"].time_ms
            for r in row.values():
                if r.gbps is not None and roofline:
                    r.pct_roofline = 100.0 * r.gbps / roofline
                if r.time_ms:
                    r.extra["speedup_vs_fp16_kernel"] = base / r.time_ms if base else None
                    r.extra["speedup_vs_sdpa_best"] = sdpa / r.time_ms if sdpa else None
                records.append(r)
            if progress:
                print(format_row(shape, row))
            del sets
            if not runtime.is_sim():
                torch.cuda.empty_cache()
    return records


def _bench_format(f: str, sets, expected, shape: dict, warmup: int, rep: int) -> dict:
    """Check and time the 8-bit kernel of format ``f`` on ``sets``: ``{name: Record}``."""
    B, Hq, Hkv, T, D = (shape[k] for k in ("B", "Hq", "Hkv", "T", "D"))
    s0 = sets[0]
    kq, vq = s0[f]
    exp_q = _reference_dequantized(s0["q"], kq, vq)
    got = quant_flash_decode(s0["q"], kq, vq)
    err_q, err_fp16 = rel_error(got, exp_q), rel_error(got, expected)
    if not err_q <= QUANT_TOLERANCE:
        raise AssertionError(f"{f} kernel at {shape}: relative error {err_q:.3g} against the dequantized "
                             f"cache's reference > {QUANT_TOLERANCE}")
    nbytes = quant_decode_bytes(B, Hq, Hkv, T, D, f)
    ms, extra = time_for_record(rotating(quant_flash_decode, [(s["q"], *s[f]) for s in sets]), warmup=warmup,
                                rep=rep)
    name = "triton_int8" if f == "int8" else "triton_fp8"
    out = {name: Record(name, shape, f, nbytes, ms, gbps(nbytes, ms),
                        extra={"rel_error_dequantized": err_q, "rel_error_vs_fp16": err_fp16, **extra})}
    if f == "int8" and not runtime.is_sim():  # the other int8 conversion, for comparison (see triton_quant)
        from labkit.attention.triton_quant import BIASED_INT8

        other = not BIASED_INT8
        fn = lambda q, k, v: quant_flash_decode(q, k, v, biased=other)  # noqa: E731
        err = rel_error(fn(s0["q"], kq, vq), exp_q)
        ms, extra = time_for_record(rotating(fn, [(s["q"], *s[f]) for s in sets]), warmup=warmup, rep=rep)
        out[f"triton_int8_biased={other}"] = Record(f"triton_int8_biased={other}", shape, f, nbytes, ms,
                                                    gbps(nbytes, ms), extra={"rel_error_dequantized": err, **extra})
    return out


def format_row(shape: dict, row: dict) -> str:
    parts = [f"B={shape['B']} T={shape['T']}:"]
    for name, r in row.items():
        if r.time_ms is None:
            parts.append(f"{name} ok")
        else:
            sp = r.extra.get("speedup_vs_fp16_kernel")
            parts.append(f"{name} {r.time_ms * 1e3:.1f} us {r.gbps:.0f} GB/s"
                         + (f" ({sp:.2f}x fp16)" if sp and name.startswith("triton_") and name != "triton_splitk"
                            else ""))
    return "  ".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--quick", action="store_true", help="shorter timings (rep 40 ms)")
    p.add_argument("--contexts", default=None)
    args = p.parse_args(argv)
    print(runtime.summary())
    warmup, rep = (10, 40) if args.quick else (25, 100)
    roof = copy_roofline_gbps()
    print(f"copy roofline: {roof} GB/s")
    records = []
    if args.sweep and not runtime.is_sim():
        fmts = [f for f in ("int8", "fp8_e4m3") if format_supported(f)]
        for f in fmts:
            for B, T in ((1, 8192), (1, 32768), (8, 8192)):
                records += sweep(f, B, T, roof, 10, 40)  # the sweep's timings are short; the table's are not
        save_records(records, "quant-sweep", run_meta(roof), args.out)
    contexts = [int(t) for t in args.contexts.split(",")] if args.contexts else None
    records += bench_quant(contexts=contexts, roofline=roof, warmup=warmup, rep=rep)
    if not runtime.is_sim():
        path = save_records(records, "quant", run_meta(roof), args.out)
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["BATCHES", "CONTEXTS", "bench_quant", "fp16_kernel_record", "make_sets", "sdpa_best", "sweep"]
