"""The 8-bit kernel's loop before and after the rewrite of issue #23, beside the fp16 kernel and
SDPA's best backend: B = 1 and 8, 32 heads, d = 128, CUDA-graph timings, KV rotated past the L2.
Each setting is checked against the float64 attention over the dequantized cache. Writes
``quant-loop_<gpu>.json``.

    git show 7be3cc8:labkit/attention/triton_quant.py > /tmp/old_quant.py   # the loop before
    LABKIT_MODE=gpu PYTHONPATH=. python scripts/gpu/quant_loop.py --old /tmp/old_quant.py --out data/results
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from pathlib import Path

import torch

from labkit.attention import decode_bytes
from labkit.attention.quant_decode import quant_flash_decode
from labkit.attention.splits import LOG2E
from labkit.attention.triton_decode import flash_decode
from labkit.attention.triton_merge import merge_splits
from labkit.attention.triton_plan import Config, plan_splits, workspace
from labkit.bench.paged import reference_on_device
from labkit.bench.quant import D, H, make_sets, sdpa_best
from labkit.bench.records import Record, run_meta, save_records
from labkit.bench.timing import copy_roofline_gbps, rotating, time_ms
from labkit.checks.core import rel_error
from labkit.kvcache.quant import format_supported, quant_decode_bytes

SHAPES = ((1, 8192), (1, 32768), (8, 8192), (1, 2048))


def launch(mod, q, k, v, out, *, bt, w, st, splits, maxnreg=None):
    """``mod``'s kernel (labkit's, or the old copy) at one setting, then the merge."""
    B, Hq, Dq = q.shape
    Hkv, T = k.data.shape[1], k.data.shape[2]
    cfg = Config(block_t=bt, num_warps=w, num_stages=st, use_dot=True)
    splits = plan_splits(B, Hq, Hkv, T, cfg, num_splits=splits)
    ws = workspace(q.device, B, Hq, splits, Dq)
    meta = mod.quant_constexprs(Hkv, Hq // Hkv, Dq, cfg, bs=1, has_lengths=False, split=True, paged=False)
    mod._quant_attend_kernel[(B * Hkv * meta["HEAD_CHUNKS"], splits)](
        q, k.data, v.data, k.scale, v.scale, q, q, out, *ws, LOG2E / math.sqrt(Dq), T, splits, 0, **meta,
        num_warps=w, **({"maxnreg": maxnreg} if maxnreg else {}))
    merge_splits(ws, out, splits, B * Hq, Dq)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/results")
    p.add_argument("--old", default=None, help="a copy of the kernel module before the rewrite (timed beside it)")
    args = p.parse_args()
    import labkit.attention.triton_quant as new
    old = None
    if args.old:
        spec = importlib.util.spec_from_file_location("old_triton_quant", args.old)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
    roof = copy_roofline_gbps()
    records = []
    for B, T in SHAPES:
        shape = {"B": B, "Hq": H, "Hkv": H, "T": T, "D": D}
        fmts = [f for f in ("int8", "fp8_e4m3") if format_supported(f)]
        sets = make_sets(B, H, H, T, D, fmts)
        fp16_bytes = decode_bytes(B, H, H, T, D, 2)
        s0 = sets[0]
        base = time_ms(rotating(lambda q, k, v: flash_decode(q, k, v), [(s["q"], s["k"], s["v"]) for s in sets]),
                       graph=True)
        sdpa_ms, sdpa_name = sdpa_best(sets, reference_on_device(s0["q"], s0["k"].float(), s0["v"].float()), 25, 100)

        def add(kernel, dtype, nbytes, ms, **extra):
            records.append(Record(kernel, shape, dtype, nbytes, ms, nbytes / ms / 1e6, 100 * nbytes / ms / 1e6 / roof,
                                  {**extra, "speedup_vs_fp16_kernel": base / ms, "speedup_vs_sdpa": sdpa_ms / ms}))
            print(f"B={B} T={T:6d} {dtype:9s} {ms * 1e3:7.1f} us {base / ms:5.2f}x  {kernel} {extra}", flush=True)

        add("triton_splitk", "float16", fp16_bytes, base)
        add(f"sdpa_best ({sdpa_name})", "float16", fp16_bytes, sdpa_ms)
        for fmt in fmts:
            nbytes = quant_decode_bytes(B, H, H, T, D, fmt)
            args8 = [(s["q"], *s[fmt], torch.empty_like(s["q"])) for s in sets]
            q, k, v, _ = args8[0]
            ref = reference_on_device(q, k.data.float() * k.scale[..., None], v.data.float() * v.scale[..., None])
            add("triton_quant (default)", fmt, nbytes, time_ms(rotating(
                lambda q, k, v, o: quant_flash_decode(q, k, v, out=o), args8), graph=True),
                rel_err=rel_error(quant_flash_decode(q, k, v), ref))
            grid = [(64, 4, st, None, mr) for st in (2, 3) for mr in (None, 128)] + [(128, 4, 3, sp, None)
                                                                                   for sp in (None, 8)]
            if B == 1 and T == 8192 and fmt == "int8":
                grid += [(64, 4, st, sp, mr) for st in (2, 3) for sp in (8, 12, 16, 24) for mr in (None, 128)]
                grid += [(128, 4, 2, sp, None) for sp in (None, 8)] + [(64, 8, 3, sp, None) for sp in (None, 16)]
            for mod, name in ((old, "before"), (new, "after")):
                for bt, w, st, sp, mr in (grid if mod is new else [(128, 4, 3, None, None), (64, 4, 3, 16, None)]):
                    if mod is None:
                        continue
                    kw = dict(bt=bt, w=w, st=st, splits=sp, maxnreg=mr)
                    err = rel_error(launch(mod, q, k, v, torch.full_like(q, float("nan")), **kw), ref)
                    ms = time_ms(rotating(lambda q, k, v, o: launch(mod, q, k, v, o, **kw), args8), graph=True)
                    add(f"triton_quant loop {name}", fmt, nbytes, ms, config=kw, rel_err=err)
        del sets
        torch.cuda.empty_cache()
    print("wrote", save_records(records, "quant-loop", run_meta(roof), Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
