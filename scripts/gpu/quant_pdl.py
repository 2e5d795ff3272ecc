"""The int8 kernel with its merge as a programmatic dependent launch (sm_90+), against the
shipped pair of launches: ``labkit.attention.triton_quant.PDL_MERGE`` off and on, beside the
fp16 flash-decoding kernel. 32 heads, d = 128, CUDA graphs, KV rotated past the L2. Checks
first that both give the same output, twice in a row. Writes ``quant-pdl_<gpu>.json``.

    LABKIT_MODE=gpu PYTHONPATH=. python scripts/gpu/quant_pdl.py --out data/results
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from labkit.attention import decode_bytes
from labkit.attention import triton_quant
from labkit.attention.quant_decode import quant_flash_decode
from labkit.attention.triton_decode import flash_decode
from labkit.bench.quant import D, H, make_sets
from labkit.bench.records import Record, run_meta, save_records
from labkit.bench.timing import copy_roofline_gbps, gbps, rotating, time_ms
from labkit.kvcache.quant import quant_decode_bytes

SHAPES = ((1, 2048), (1, 8192), (1, 32768), (8, 8192))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/results")
    args = p.parse_args()
    roof, records = copy_roofline_gbps(), []
    for B, T in SHAPES:
        shape = {"B": B, "Hq": H, "Hkv": H, "T": T, "D": D}
        sets = make_sets(B, H, H, T, D, ("int8",))
        args8 = [(s["q"], *s["int8"], torch.empty_like(s["q"])) for s in sets]
        q, k, v, _ = args8[0]
        triton_quant.PDL_MERGE = False
        want = quant_flash_decode(q, k, v)
        triton_quant.PDL_MERGE = True
        for _ in range(2):
            got = quant_flash_decode(q, k, v, out=torch.full_like(q, float("nan")))
            assert torch.equal(got, want), f"B={B} T={T}: the PDL merge differs from the two launches"
        times = {"fp16": time_ms(rotating(lambda q, k, v: flash_decode(q, k, v),
                                          [(s["q"], s["k"], s["v"]) for s in sets]), graph=True)}
        for pdl in (False, True):
            triton_quant.PDL_MERGE = pdl
            times[pdl] = time_ms(rotating(lambda q, k, v, o: quant_flash_decode(q, k, v, out=o), args8), graph=True)
        triton_quant.PDL_MERGE = False
        b16, b8 = decode_bytes(B, H, H, T, D, 2), quant_decode_bytes(B, H, H, T, D, "int8")
        records.append(Record("triton_splitk", shape, "float16", b16, times["fp16"], gbps(b16, times["fp16"]),
                              100 * gbps(b16, times["fp16"]) / roof, {}))
        for pdl in (False, True):
            ms = times[pdl]
            records.append(Record("triton_int8 pdl merge" if pdl else "triton_int8", shape, "int8", b8, ms,
                                  gbps(b8, ms), 100 * gbps(b8, ms) / roof, {"speedup_vs_fp16_kernel": times["fp16"] / ms}))
        print(f"B={B} T={T}: fp16 {times['fp16'] * 1e3:.1f} us  int8 {times[False] * 1e3:.1f} us "
              f"({times['fp16'] / times[False]:.2f}x)  int8+pdl {times[True] * 1e3:.1f} us "
              f"({times['fp16'] / times[True]:.2f}x)", flush=True)
        del sets, args8
        torch.cuda.empty_cache()
    print("wrote", save_records(records, "quant-pdl", run_meta(roof), Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
