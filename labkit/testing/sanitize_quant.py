"""Run the quantized-cache kernels at small, odd shapes: a target for compute-sanitizer's memcheck.

    compute-sanitizer --tool memcheck --error-exitcode 3 python3 -m labkit.testing.sanitize_quant

Covers the dequantizing flash-decoding kernel (contiguous and paged, int8 and, on sm_89+, fp8
e4m3; more splits than tiles, ragged lengths, GQA on both scoring paths, T = 1 and T not a
multiple of any tile; on sm_80+ also the loop with the heads on the MMA's N side) and the
quantize-on-write kernel (with RoPE, tokens at the cache's last slot). Each attention case runs
twice into an output poisoned with NaN and is compared with the float64 reference of the
dequantized cache; exits 1 on a wrong answer (the sanitizer's exit code reports memory errors).
"""

from __future__ import annotations

import sys

import labkit  # noqa: F401  (decides the mode before triton is imported)
import torch

from labkit import runtime
from labkit.attention.quant_decode import quant_flash_decode, reference_quant_decode
from labkit.attention.triton_plan import capability
from labkit.checks.core import poisoned
from labkit.kvcache.paged_attention import paged_decode
from labkit.kvcache.quant import QuantKV, empty_quant, format_supported, quantize, to_paged_quant
from labkit.kvcache.quant_write import quant_write, reference_quant_write
from labkit.rope import rope_tables
from labkit.testing.sanitize import check_twice

CASES = [  # (B, Hq, Hkv, T, D, splits, block_t, use_dot)
    (1, 2, 2, 1, 64, None, None, None),
    (2, 4, 4, 37, 128, 50, 16, False),  # more splits asked than tiles, reductions
    (3, 8, 2, 300, 128, 7, None, None),  # GQA 4
    (2, 32, 32, 1000, 128, None, None, None),
    (1, 12, 12, 777, 64, 64, 16, False),
]


def write_places(R: int, S: int, N: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """N distinct ``(row, slot)`` places of an ``[R, ·, S]`` cache, the last one its last place:
    int32 ``rows`` and ``slots`` [N]. Two tokens written to one place would race (the data of
    one, the scale of the other), so the answer would be undefined."""
    flat = torch.cat([torch.randperm(R * S - 1, device=device)[:N - 1], torch.tensor([R * S - 1], device=device)])
    return (flat // S).int(), (flat % S).int()


def main() -> int:
    print(runtime.summary())
    dev = runtime.device()
    bad = 0
    fmts = [f for f in ("int8", "fp8_e4m3") if format_supported(f)]
    mma = runtime.MODE == "gpu" and capability() >= (8, 0)  # heads_on_n is a tensor-core loop
    for fmt in fmts:
        for B, Hq, Hkv, T, D, splits, block_t, use_dot in CASES:
            q = torch.randn(B, Hq, D, device=dev, dtype=torch.float16)
            k = quantize(torch.randn(B, Hkv, T, D, device=dev), fmt)
            v = quantize(torch.randn(B, Hkv, T, D, device=dev), fmt)
            lengths = torch.randint(1, T + 1, (B,), dtype=torch.int32, device=dev)
            lengths[0] = T
            expected = reference_quant_decode(q, k, v, lengths=lengths)
            kp, table = to_paged_quant(k, 16)
            vp, _ = to_paged_quant(v, 16, tables=table)
            nan = lambda: poisoned(q.shape, q.dtype, q.device)  # noqa: E731
            runs = {
                "quant_flash_decode": lambda: quant_flash_decode(q, k, v, lengths=lengths, num_splits=splits,
                                                                 block_t=block_t, use_dot=use_dot, out=nan()),
                "paged_decode(QuantKV)": lambda: paged_decode(q, kp, vp, table, lengths, num_splits=splits,
                                                              out=nan()),
            }
            if mma:
                runs["quant_flash_decode(heads_on_n)"] = lambda: quant_flash_decode(
                    q, k, v, lengths=lengths, num_splits=splits, block_t=max(16, block_t or 32), num_warps=1,
                    use_dot=True, heads_on_n=True, out=nan())
            bad += check_twice(runs, expected, torch.float16,
                               f"{fmt} B={B} Hq={Hq} Hkv={Hkv} T={T} D={D} splits={splits}")
        # quantize-on-write, RoPE on, the last token at the cache's last slot
        R, H, S, D, N = 3, 5, 33, 128, 7
        kn, vn = (torch.randn(N, H, D, device=dev, dtype=torch.float16) for _ in range(2))
        rows, slots = write_places(R, S, N, dev)
        cos, sin = rope_tables(64, D, device=dev)
        rope = (cos, sin, torch.randint(0, 64, (N,), device=dev, dtype=torch.int32))
        got, want = empty_quant((R, H, S, D), fmt), empty_quant((R, H, S, D), fmt)
        gv, wv = empty_quant((R, H, S, D), fmt), empty_quant((R, H, S, D), fmt)
        for a, b in ((got, want), (gv, wv)):
            a.data.zero_(), a.scale.zero_(), b.data.zero_(), b.scale.zero_()
        for _ in range(2):
            quant_write(kn, vn, got, gv, rows, slots, rope)
            if runtime.MODE == "gpu":
                torch.cuda.synchronize()
        reference_quant_write(kn, vn, want, wv, rows, slots, rope)
        diff = max((got.dequantize() - want.dequantize()).abs().max().item(),
                   (gv.dequantize() - wv.dequantize()).abs().max().item())
        ok = diff <= 1.01 * want.scale.max().item()  # at most one step of rounding apart
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'} quant_write {fmt}: max |difference| {diff:.2e}")
    print("all passed" if not bad else f"{bad} wrong")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
