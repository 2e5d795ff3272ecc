"""Section ``roofline`` (notebook 00): the copy roofline every other figure is measured against.

A device-to-device copy of a buffer far larger than the L2, counted as bytes read plus bytes
written over the time: what this GPU's memory can stream. Sim mode has no timings.
"""

from __future__ import annotations

from labkit import runtime
from labkit.bench.records import Record
from labkit.bench.sections import headline
from labkit.bench.timing import copy_roofline_gbps

TITLE = "copy roofline"
NOTEBOOKS = "00"
RESULTS = "roofline"


def run(quick: bool = False, *, roofline_gbps: float | None = None, progress: bool = True) -> list[Record]:
    """One record of the copy roofline (measured now unless ``roofline_gbps`` is given); ``[]`` in sim mode."""
    roof = roofline_gbps if roofline_gbps is not None else copy_roofline_gbps()
    if roof is None:
        return []
    nbytes = max(runtime.SIZES.copy_bytes, 0)
    return [Record("copy", {"bytes_per_buffer": nbytes}, "float32", 2 * nbytes, gbps=roof, pct_roofline=100.0)]


def summary(records: list[Record]) -> dict | None:
    copy = next((r for r in records if r.kernel == "copy" and r.gbps), None)
    if copy is None:
        return None
    return headline(f"{copy.gbps:.0f} GB/s device-to-device (read + write)", None, "GB/s", "copy roofline")


def show(records: list[Record], source: str) -> None:
    row = summary(records)
    print(f"copy roofline: {row['text'] if row else 'not measured'} ({source})")


__all__ = ["NOTEBOOKS", "RESULTS", "TITLE", "run", "show", "summary"]
