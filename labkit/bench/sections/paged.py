"""Section ``paged`` (notebook 05): the paged kernel against the contiguous one, and memory waste.

On a GPU: flash-decoding over a contiguous cache, SDPA, and the paged kernel at block sizes 8,
16, 32 and 64 over shuffled pools, fp16, d = 128, 32 query heads over 32 or 8 KV heads, batch 1
and 8 (contexts 1k–16k; ``quick``: 4k and 8k), each checked against float64 first. The
headline is the paged kernel's speed over the contiguous one at block size 16, T ≥ 4096, with
the memory wasted by max-length preallocation against 16-token blocks (counted, not timed).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from labkit import runtime
from labkit.bench.paged import BLOCK_SIZES, bench_paged, ratio_table
from labkit.bench.records import Record
from labkit.bench.sections import SectionFailed, headline

TITLE = "paged KV cache"
NOTEBOOKS = "05"
RESULTS = "paged_kernel"
CONTEXTS, QUICK_CONTEXTS = (1024, 4096, 8192, 16384), (4096, 8192)
SIM_CASES = ((2, 4, 2, 13), (1, 4, 4, 40))  # (B, Hq, Hkv, T) at D = 16, fp32, block sizes 4 and 8


def run(quick: bool = False, *, roofline_gbps: float | None = None, progress: bool = True) -> list[Record]:
    """Check (and on a GPU time) the paged kernel beside the contiguous one; see :func:`bench_paged`."""
    if runtime.is_sim():
        cases = [dict(block_sizes=(4, 8), B=B, Hq=Hq, Hkv=Hkv, T=T, D=16, dtype=torch.float32)
                 for B, Hq, Hkv, T in SIM_CASES[:1 if quick else None]]
    else:
        cases = [dict(block_sizes=BLOCK_SIZES, B=B, Hq=32, Hkv=Hkv, T=T, D=128, dtype=torch.float16)
                 for B in (1, 8) for Hkv in (32, 8) for T in (QUICK_CONTEXTS if quick else CONTEXTS)]
    records, failures = [], []
    for case in tqdm(cases, desc="paged", disable=not progress, leave=False):
        try:
            records += bench_paged(case.pop("block_sizes"), roofline_gbps=roofline_gbps, **case)
        except AssertionError as exc:  # a kernel disagreed with float64: report, go on
            failures.append(str(exc))
        if not runtime.is_sim():
            torch.cuda.empty_cache()
    if failures:
        raise SectionFailed(failures, records)
    return records


def _waste() -> dict | None:
    """Recorded waste (``paged_waste_*.json``, counted on the CPU): contiguous vs 16-token blocks."""
    from labkit.viz.plots import recorded

    rec, meta = recorded("paged_waste_*.json")
    by = {r.kernel: r.extra.get("waste") for r in rec}
    return by if meta and "contiguous" in by and "paged bs=16" in by else None


def summary(records: list[Record]) -> dict | None:
    ratios = [r.extra["vs_contiguous"] for r in records if r.kernel == "paged bs=16" and r.extra.get("vs_contiguous")]
    long = [r.extra["vs_contiguous"] for r in records if r.kernel == "paged bs=16" and r.extra.get("vs_contiguous")
            and r.shape["T"] >= 4096]
    if not ratios:
        return None
    ratios = long or ratios
    text = f"paged bs=16 / contiguous: {min(ratios):.2f}–{max(ratios):.2f}× speed"
    waste = _waste()
    if waste:
        text += f"; memory wasted {waste['paged bs=16']:.1%} vs {waste['contiguous']:.0%} preallocated"
    return headline(text, min(ratios), "× contiguous (worst)", "paged kernel vs contiguous")


def show(records: list[Record], source: str) -> None:
    print(f"paged speed / contiguous speed, per block size ({source}):")
    print(ratio_table(records))


__all__ = ["NOTEBOOKS", "RESULTS", "TITLE", "run", "show", "summary"]
