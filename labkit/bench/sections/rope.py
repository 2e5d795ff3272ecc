"""Section ``rope`` (notebook 04): RoPE fused into the KV write and the attention kernel's loads.

On a GPU (fp16, Llama shape, batch 1 and 8, contexts 512–4096; ``quick``: batch 1 at 512 and
2048): SDPA and flash-decoding on a rotated q, flash-decoding rotating q itself, and the decode
step unfused (separate ops) and fused (two kernels), each checked against float64 first. The
headlines: what the rotation costs inside attention, and the fused step's speedup at T ≤ 2048.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from labkit import runtime
from labkit.bench.records import Record
from labkit.bench.rope import bench_rope, format_fusion_summary, fusion_summary
from labkit.bench.sections import SectionFailed, headline

TITLE = "RoPE fusion"
NOTEBOOKS = "04"
RESULTS = "rope"


def run(quick: bool = False, *, roofline_gbps: float | None = None, progress: bool = True) -> list[Record]:
    """Check (and on a GPU time) the RoPE variants; see :func:`labkit.bench.rope.bench_rope`."""
    if runtime.is_sim():
        batches, contexts, dtype = (1,) if quick else (1, 2), (9,) if quick else (9, 40), torch.float32
    else:
        batches, contexts, dtype = ((1,), (512, 2048), torch.float16) if quick else ((1, 8), None, torch.float16)
    records = []
    for B in tqdm(batches, desc="rope", disable=not progress, leave=False):
        try:
            records += bench_rope(batches=(B,), contexts=contexts, dtype=dtype, roofline_gbps=roofline_gbps)
        except AssertionError as exc:
            raise SectionFailed([str(exc)], records) from exc
    return records


def summary(records: list[Record]) -> dict | None:
    rows = fusion_summary(records)
    over = [r["rope_overhead"] for r in rows if r["rope_overhead"]]
    speed = [r["step_speedup"] for r in rows if r["step_speedup"] and r["T"] <= 2048]
    if not over and not speed:
        return None
    text = []
    if over:
        text.append(f"RoPE inside attention {min(over):.3f}–{max(over):.3f}× attention alone")
    if speed:
        text.append(f"fused step {min(speed):.1f}–{max(speed):.1f}× the unfused one at T ≤ 2048")
    return headline("; ".join(text), min(speed) if speed else None, "× unfused step (worst)",
                    "fused vs unfused decode step")


def show(records: list[Record], source: str) -> None:
    print(f"RoPE fusion ({source}):")
    print(format_fusion_summary(records))


__all__ = ["NOTEBOOKS", "RESULTS", "TITLE", "run", "show", "summary"]
