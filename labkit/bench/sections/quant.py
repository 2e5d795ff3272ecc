"""Section ``quant`` (notebook 08): the flash-decoding kernel reading an int8 (fp8 e4m3) KV cache.

On a GPU (fp16 queries, 32 heads, d = 128, batch 1 and 8, T 2048–32768; ``quick``: batch 1 at
2048 and 8192): the course's fp16 kernel, SDPA's best backend and the 8-bit kernels, each checked
against float64 first; effective GB/s counts each kernel's own bytes (8-bit data plus scales). The
headline: the int8 kernel's speedup over the fp16 kernel at the longest context.
"""

from __future__ import annotations

from tqdm.auto import tqdm

from labkit import runtime
from labkit.bench.quant import BATCHES, bench_quant
from labkit.bench.records import Record
from labkit.bench.sections import SectionFailed, headline

TITLE = "quantized KV cache"
NOTEBOOKS = "08"
RESULTS = "quant"


def run(quick: bool = False, *, roofline_gbps: float | None = None, progress: bool = True) -> list[Record]:
    """Check (and on a GPU time) the 8-bit kernels; see :func:`labkit.bench.quant.bench_quant`."""
    batches = (1,) if quick or runtime.is_sim() else BATCHES
    contexts = None if runtime.is_sim() or not quick else (2048, 8192)
    records = []
    for B in tqdm(batches, desc="quant", disable=not progress, leave=False):
        try:
            records += bench_quant(batches=(B,), contexts=contexts, roofline=roofline_gbps)
        except AssertionError as exc:
            raise SectionFailed([str(exc)], records) from exc
    return records


def summary(records: list[Record]) -> dict | None:
    timed = [r for r in records if r.kernel == "triton_int8" and r.time_ms and r.extra.get("speedup_vs_fp16_kernel")]
    if not timed:
        return None
    longest = max(r.shape["T"] for r in timed)
    at = [r.extra["speedup_vs_fp16_kernel"] for r in timed if r.shape["T"] == longest]
    sdpa = [r.extra.get("speedup_vs_sdpa_best") for r in timed if r.shape["T"] == longest]
    sdpa = [s for s in sdpa if s]
    text = f"int8 cache {min(at):.2f}–{max(at):.2f}× the fp16 kernel at T = {longest}"
    if sdpa:
        text += f" ({min(sdpa):.2f}–{max(sdpa):.2f}× SDPA's best)"
    return headline(text, min(at), "× fp16 kernel (worst, longest T)", "int8 vs fp16 flash-decoding")


def show(records: list[Record], source: str) -> None:
    from labkit.viz.quant import format_quant_table

    print(f"quantized KV cache ({source}):")
    print(format_quant_table(records))


__all__ = ["NOTEBOOKS", "RESULTS", "TITLE", "run", "show", "summary"]
