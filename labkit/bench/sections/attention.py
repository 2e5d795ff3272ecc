"""Section ``attention`` (notebooks 01–03): every decode-attention kernel against naive and SDPA.

naive three-pass (01), the Numba fused kernel (02), Triton one-pass and flash-decoding (03) and
PyTorch's SDPA, each checked against float64 then timed (CUDA graph, KV rotated past the L2),
over the GPT-2, Llama and Llama-GQA shapes. ``quick``: the Llama shape, batch 1, three contexts.
"""

from __future__ import annotations

import torch

from labkit import runtime
from labkit.bench.attention import (SHAPES, available_kernels, bench_attention, correctness_summary, save_plots,
                                    seed_table)
from labkit.bench.records import Record
from labkit.bench.sections import SectionFailed, headline

TITLE = "decode attention"
NOTEBOOKS = "01-03"
RESULTS = "attention"
QUICK_CONTEXTS = (2048, 8192, 32768)


def run(quick: bool = False, *, roofline_gbps: float | None = None, progress: bool = True, shapes=None,
        batches=None, contexts=None, dtype: torch.dtype | None = None) -> list[Record]:
    """Check and time every available kernel; see :func:`labkit.bench.attention.bench_attention`."""
    kernels, skipped = available_kernels()
    for line in skipped:
        print("  " + line)
    if quick:
        shapes, batches = shapes or ("llama",), batches or (1,)
        contexts = contexts or (None if runtime.is_sim() else QUICK_CONTEXTS)
    records, failures = bench_attention(tuple(shapes or SHAPES), batches=batches, contexts=contexts, dtype=dtype,
                                        roofline_gbps=roofline_gbps, kernels=kernels, progress=progress)
    print("correctness (float64 reference):\n" + correctness_summary(records))
    if failures:
        raise SectionFailed(failures, records)
    return records


def summary(records: list[Record]) -> dict | None:
    """flash-decoding at the Llama shape, batch 1, the longest context: % of roofline, × naive, × SDPA."""
    rows = [r for r in records if r.kernel == "triton_splitk" and r.time_ms and r.shape.get("B") == 1
            and r.shape.get("Hq") == r.shape.get("Hkv") and r.extra.get("shape", "llama") == "llama"]
    if not rows:
        return None
    r = max(rows, key=lambda r: r.shape["T"])
    naive, sdpa = r.extra.get("speedup_vs_naive"), r.extra.get("speedup_vs_sdpa")
    pct = f"{r.pct_roofline:.0f}% of roofline, " if r.pct_roofline else ""
    text = (f"flash-decoding, Llama B=1, T={r.shape['T']}: {r.time_ms * 1e3:.1f} µs, {pct}"
            f"{naive or 0:.2f}× naive, {sdpa or 0:.2f}× SDPA")
    return headline(text, sdpa, "× SDPA", "Triton flash-decoding vs SDPA")


def show(records: list[Record], source: str) -> None:
    from labkit.viz import format_table

    print(f"decode attention ({source}):")
    print(format_table(records))
    if any(r.extra.get("shape") == "gpt2" for r in records):
        print("\nspeedup over naive, GPT-2 shape, batch 1:\n" + seed_table(records))


def plots(records: list[Record], out, meta: dict) -> list:
    """One PNG per shape at batch 1 (see :func:`labkit.bench.attention.save_plots`)."""
    return save_plots(records, out, meta)


__all__ = ["NOTEBOOKS", "RESULTS", "TITLE", "plots", "run", "show", "summary"]
