"""``labkit bench``: the speedup report.

On a GPU it measures the copy roofline, then every section's kernels, prints a table and
writes JSON (and plots) under the output folder. In sim mode it runs every kernel for
correctness at small sizes, says that timings need a GPU, and shows the recorded GPU results
shipped in ``data/results/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from labkit import runtime
from labkit.bench.records import RESULTS_DIR, Record, label, load_results, run_meta, save_records
from labkit.bench.timing import copy_roofline_gbps, timings_need_gpu_message


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=str(RESULTS_DIR), help="folder for JSON results and plots (default data/results)")
    p.add_argument("--sections", default="all",
                   help="comma-separated sections to run: roofline, attention (default all)")
    p.add_argument("--shapes", default="all", help="attention shapes: gpt2, llama, llama-gqa, or all")
    p.add_argument("--dtype", default=None, help="force one dtype (float16 or float32) for every shape")
    p.add_argument("--contexts", default=None, help="comma-separated context lengths (default: the mode's sizes)")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default: the mode's sizes)")


def roofline_section(out: Path) -> float | None:
    """Measure and record the copy roofline; return it in GB/s (``None`` in sim mode)."""
    roof = copy_roofline_gbps()
    meta = run_meta(roof)
    print(f"device: {meta['device']}" + (f" (cc {meta['cc']}, {meta['sms']} SMs, L2 {meta['l2_mb']} MB)"
                                         if meta["cc"] else ""))
    print("versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v))
    if roof is None:
        print(f"copy roofline: {timings_need_gpu_message()}")
        for res in load_results("roofline_*.json"):
            print(f"  recorded: {res['meta']['roofline_gbps']:.0f} GB/s on {label(res['meta'])}")
        return None
    nbytes = max(runtime.SIZES.copy_bytes, 0)
    rec = Record("copy", {"bytes_per_buffer": nbytes}, "float32", 2 * nbytes, gbps=roof, pct_roofline=100.0)
    path = save_records([rec], "roofline", meta, out)
    print(f"copy roofline: {roof:.0f} GB/s (device-to-device, read + write) -> {path}")
    return roof


def roofline_or_recorded(pattern: str = "roofline_*.json") -> tuple[float | None, str]:
    """The copy roofline to compare against, and a line that says where it comes from.

    On a GPU: measured now. In sim mode: the one recorded with the newest results matching
    ``pattern`` (e.g. ``"naive_passes_*.json"``, so figures and roofline come from one run),
    and the line says it is recorded and on which GPU, e.g. ``copy roofline: 4248 GB/s
    (recorded on NVIDIA H200, 2026-12-02; sim mode measures nothing)``.
    """
    from labkit.viz import recorded

    roof = copy_roofline_gbps()
    if roof is not None:
        return roof, f"copy roofline: {roof:.0f} GB/s (measured now)"
    _, meta = recorded(pattern)
    if not meta or not meta.get("roofline_gbps"):
        return None, "copy roofline: not measured (sim mode) and none recorded"
    return meta["roofline_gbps"], (f"copy roofline: {meta['roofline_gbps']:.0f} GB/s (recorded on {label(meta)}; "
                                   "sim mode measures nothing)")


def _sections():
    """Name -> function(out, roofline, args). Attention appears once its module exists."""
    sections = {"roofline": None}
    try:
        from labkit.bench.attention import attention_section

        sections["attention"] = attention_section
    except ImportError:
        pass
    return sections


def run_report(args) -> int:
    out = Path(args.out)
    print(runtime.summary())
    available = _sections()
    wanted = list(available) if args.sections == "all" else [s.strip() for s in args.sections.split(",")]
    unknown = [s for s in wanted if s not in available]
    if unknown:
        print(f"labkit bench: unknown section(s) {unknown}; expected some of {list(available)}")
        return 2
    roof = roofline_section(out)
    status = 0
    for name in wanted:
        if available[name] is not None and available[name](out, roof, args):
            status = 1  # a section reports failed kernels by returning non-zero
    return status
