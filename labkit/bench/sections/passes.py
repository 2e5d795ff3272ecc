"""Section ``passes`` (notebook 01): naive three-pass attention, one pass at a time.

The scores, softmax and output passes timed alone and together (the whole naive decode), with
the bytes each moves: where the naive code's HBM round trips go. GPT-2 small (12 heads, d 64,
fp32) and Llama (32 heads, d 128, fp16), batch 1, contexts 512 … 32768 (``quick``: Llama at
2k and 32k). The headline: the share of the three passes' bytes that decode does not need.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from labkit import runtime
from labkit.bench.passes import bench_naive_passes
from labkit.bench.records import Record
from labkit.bench.sections import SectionFailed, headline

TITLE = "naive three-pass attention"
NOTEBOOKS = "01"
RESULTS = "naive_passes"
SHAPES = {"gpt2": (12, 12, 64, torch.float32), "llama": (32, 32, 128, torch.float16)}  # (Hq, Hkv, D, dtype)
CONTEXTS, QUICK_CONTEXTS = (512, 2048, 4096, 8192, 32768), (2048, 32768)
SIM_SHAPE, SIM_CONTEXTS = (2, 2, 16, torch.float32), (16, 48)
REP, WARMUP = 20, 10  # ms per timing, as the recorded run


def run(quick: bool = False, *, roofline_gbps: float | None = None, progress: bool = True) -> list[Record]:
    """Check the naive decode against float64 and (on a GPU) time each pass; see :func:`bench_naive_passes`."""
    if runtime.is_sim():
        cases = [("llama", *SIM_SHAPE, T) for T in SIM_CONTEXTS[:1 if quick else None]]
    else:
        shapes = ("llama",) if quick else tuple(SHAPES)
        cases = [(name, *SHAPES[name], T) for name in shapes for T in (QUICK_CONTEXTS if quick else CONTEXTS)]
    records, failures = [], []
    for name, Hq, Hkv, D, dtype, T in tqdm(cases, desc="passes", disable=not progress, leave=False):
        try:
            recs = bench_naive_passes(B=1, Hq=Hq, Hkv=Hkv, T=T, D=D, dtype=dtype, roofline_gbps=roofline_gbps,
                                      warmup=WARMUP, rep=REP)
        except AssertionError as exc:
            failures.append(str(exc))
            continue
        for r in recs:
            r.extra["shape"] = name
        records += recs
    if failures:
        raise SectionFailed(failures, records)
    return records


def summary(records: list[Record]) -> dict | None:
    whole = [r for r in records if r.kernel == "naive" and r.extra.get("bytes_moved")]
    if not whole:
        return None
    r = max(whole, key=lambda r: (r.extra.get("shape") == "llama", r.shape["T"]))
    extra = r.extra["bytes_moved"] / r.bytes
    pct = f", {r.pct_roofline:.0f}% of roofline" if r.pct_roofline else ""
    return headline(f"{r.extra.get('shape', '')} T={r.shape['T']}: the three passes move {extra:.2f}× the bytes "
                    f"decode needs{pct}", None, "", "naive passes' bytes")


def show(records: list[Record], source: str) -> None:
    from labkit.viz import format_table

    print(f"naive passes ({source}):")
    print(format_table(records))


__all__ = ["NOTEBOOKS", "RESULTS", "TITLE", "run", "show", "summary"]
