"""The quantized kernel's error over long ranges on a GPU: the plan, the heads-on-N loop (one warp,
32-token tiles) and the 128-token, 4-warp build, each against the float64 attention over the
dequantized cache, computed on the GPU (``labkit.bench.paged.reference_on_device``). int8, d = 128,
random fp16 K, V and q. Prints a line per shape; writes ``quant-errors_<gpu>.json`` (one record per
shape, the relative errors in ``extra``).

    LABKIT_MODE=gpu PYTHONPATH=. python scripts/gpu/quant_errors.py --out data/results

Ranges of thousands of tokens a split are where a loop's accumulation shows: the heads-on-N loop
once took the values' bias off the accumulator at the end of a range, and lost 0.2-3.5% there on
an H100 while the interpreter saw 2.9e-4 (``docs/maintainers/history.md``, 2026-12-07 afternoon).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from labkit import runtime
from labkit.attention.quant_decode import quant_flash_decode
from labkit.bench.paged import reference_on_device
from labkit.bench.records import Record, run_meta, save_records
from labkit.checks.core import rel_error
from labkit.kvcache.quant import quant_decode_bytes, quantize

SHAPES = [  # (B, Hkv, group, T, splits: None for the plan's)
    (1, 32, 1, 8192, 1), (1, 32, 1, 8192, 26), (8, 32, 1, 8192, 4), (8, 8, 4, 8192, 14),
    (1, 2, 1, 3790, 1), (2, 2, 2, 2048, 1), (1, 32, 1, 32768, None), (1, 8, 4, 32768, None),
]
SETTINGS = {
    "plan": {},
    "heads_on_n": dict(block_t=32, num_warps=1, num_stages=3, heads_on_n=True),
    "4-warp": dict(block_t=128, num_warps=4, num_stages=3, use_dot=True, heads_on_n=False),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/results")
    args = p.parse_args()
    dev, D = runtime.device(), 128
    records = []
    for B, Hkv, group, T, splits in SHAPES:
        q = torch.randn(B, Hkv * group, D, device=dev, dtype=torch.float16)
        k, v = (quantize(torch.randn(B, Hkv, T, D, device=dev, dtype=torch.float16)) for _ in range(2))
        expected = reference_on_device(q, k.dequantize(torch.float64), v.dequantize(torch.float64))
        errors = {name: rel_error(quant_flash_decode(q, k, v, num_splits=splits, **kw), expected)
                  for name, kw in SETTINGS.items()}
        shape = {"B": B, "Hq": Hkv * group, "Hkv": Hkv, "T": T, "D": D}
        records.append(Record("quant_error", shape, "int8", quant_decode_bytes(B, Hkv * group, Hkv, T, D, "int8"),
                              extra={"splits": splits, "rel_error": errors}))
        print(f"B={B} Hkv={Hkv} g={group} T={T} splits={splits}: "
              + "  ".join(f"{name} {e:.2e}" for name, e in errors.items()), flush=True)
    print("wrote", save_records(records, "quant-errors", run_meta(), Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
