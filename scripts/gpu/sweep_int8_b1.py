"""The int8 kernel at batch 1, 32 heads, d = 128, T tokens (default 8192): every tile, warp,
stage and split setting against the fp16 flash-decoding kernel, CUDA-graph timings, KV rotated
past the L2. Writes ``<name>_<gpu>.json`` (``--name``, default quant-b1-sweep). With no options
it runs the full grid; the options narrow it (``--block 128 --warps 4 --stages 2 3 --splits 0 8 --no-reductions``).

    LABKIT_MODE=gpu PYTHONPATH=. python scripts/gpu/sweep_int8_b1.py --out data/results [--T 8192]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from labkit.attention import decode_bytes
from labkit.attention.quant_decode import quant_flash_decode
from labkit.attention.triton_decode import flash_decode
from labkit.bench.quant import D, H, make_sets
from labkit.bench.records import Record, run_meta, save_records
from labkit.bench.timing import copy_roofline_gbps, gbps, rotating, time_ms
from labkit.kvcache.quant import quant_decode_bytes


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
    T, shape, roof = args.T, {"B": 1, "Hq": H, "Hkv": H, "T": args.T, "D": D}, copy_roofline_gbps()
    sets = make_sets(1, H, H, T, D, ("int8",))
    base = time_ms(rotating(lambda q, k, v: flash_decode(q, k, v), [(s["q"], s["k"], s["v"]) for s in sets]),
                   graph=True)
    print(f"fp16 triton_splitk T={T}: {base * 1e3:.1f} us", flush=True)
    args8 = [(s["q"], *s["int8"]) for s in sets]
    nbytes = quant_decode_bytes(1, H, H, T, D, "int8")
    fp16_bytes = decode_bytes(1, H, H, T, D, 2)

    def rate(b, ms):  # (effective GB/s, % of the copy roofline)
        return gbps(b, ms), 100 * gbps(b, ms) / roof

    records = [Record("triton_splitk", shape, "float16", fp16_bytes, base, *rate(fp16_bytes, base), {})]
    for bt, w, st, dot, sp in configs(args.block, args.warps, args.stages, args.splits, args.reductions):
        kw = dict(block_t=bt, num_warps=w, num_stages=st, use_dot=dot, num_splits=sp)
        try:
            ms = time_ms(rotating(lambda q, k, v: quant_flash_decode(q, k, v, **kw), args8), warmup=10, rep=40,
                         graph=True)
        except Exception as exc:  # noqa: BLE001 - a setting that does not compile or fit
            print("fail", kw, type(exc).__name__, str(exc)[:60])
            continue
        records.append(Record("sweep_int8", shape, "int8", nbytes, ms, *rate(nbytes, ms),
                              {"config": kw, "speedup_vs_fp16_kernel": base / ms}))
        print(f"{ms * 1e3:7.1f} us {base / ms:.2f}x {rate(nbytes, ms)[1]:5.1f}% {kw}", flush=True)
    print("wrote", save_records(records, args.name, run_meta(roof), Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
