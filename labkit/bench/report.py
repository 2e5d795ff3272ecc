"""``labkit bench``: the whole course's speedup report, one section per notebook.

On a GPU it measures the copy roofline, then runs each section (:mod:`labkit.bench.sections`),
prints its table, writes its JSON records (and plots) under the output folder, and ends with a
summary table of each notebook's headline figure and a summary plot. In sim mode each section
checks its kernels at small sizes, says that timings need a GPU, and shows the recorded GPU
results shipped in ``data/results/``, labelled with the GPU and date.
"""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path

from labkit import runtime
from labkit.bench.records import RESULTS_DIR, label, run_meta, save_records, slug
from labkit.bench.sections import SECTIONS, SectionFailed, load_section, measured_or_recorded
from labkit.bench.timing import copy_roofline_gbps, timings_need_gpu_message


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=str(RESULTS_DIR), help="folder for JSON results and plots (default data/results)")
    p.add_argument("--sections", default="all", help=f"comma-separated sections: {', '.join(SECTIONS)} (default all)")
    p.add_argument("--quick", action="store_true", help="a first look: fewer shapes and contexts in every section")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--shapes", default="all", help="attention shapes: gpt2, llama, llama-gqa, or all")
    p.add_argument("--dtype", default=None, help="attention: force one dtype (float16 or float32) for every shape")
    p.add_argument("--contexts", default=None, help="attention: comma-separated context lengths")
    p.add_argument("--batches", default=None, help="attention: comma-separated batch sizes")


def _ints(text):
    return None if text in (None, "", "all") else [int(x) for x in str(text).split(",") if x.strip()]


def _section_options(name: str, args) -> dict:
    if name != "attention":
        return {}
    import torch

    return {"shapes": None if args.shapes in (None, "all") else [s.strip() for s in args.shapes.split(",")],
            "dtype": getattr(torch, args.dtype) if args.dtype else None,
            "contexts": _ints(args.contexts), "batches": _ints(args.batches)}


def run_section(name: str, *, quick: bool, roofline_gbps, progress: bool, out: Path, meta: dict, **options) -> dict:
    """Run one section; save (GPU) or look up (sim) its records; print its table. Returns its summary row."""
    sec = load_section(name)
    print(f"\n== {name} (notebook {sec.NOTEBOOKS}): {sec.TITLE}", flush=True)
    t0, failures = time.monotonic(), []
    try:
        records = sec.run(quick, roofline_gbps=roofline_gbps, progress=progress, **options)
    except SectionFailed as exc:
        records, failures = exc.records, exc.failures
    except Exception as exc:  # noqa: BLE001 - one broken section must not stop the report
        traceback.print_exc()
        records, failures = [], [f"{type(exc).__name__}: {exc}"]
    seconds = time.monotonic() - t0
    if runtime.is_sim():
        print(timings_need_gpu_message())
        shown, source = measured_or_recorded(name, records)
    else:
        shown, source = records, "this run"
        if records:
            print(f"records -> {save_records(records, sec.RESULTS, meta, out)}")
            for png in getattr(sec, "plots", lambda *a: [])(records, out, meta):
                print(f"plot -> {png}")
    if shown and hasattr(sec, "show"):
        sec.show(shown, source)
    for line in failures:
        print("FAILED " + line)
    row = (sec.summary(shown) if shown else None) or {"text": "—", "value": None, "unit": ""}
    return {**row, "section": name, "notebook": sec.NOTEBOOKS, "source": source, "seconds": seconds,
            "ok": not failures, "checked": len(records)}


def format_summary(rows: list[dict]) -> str:
    head = f"{'nb':<6}{'section':<13}{'check':<7}{'time':>7}  headline"
    lines = [head, "-" * 100]
    for r in rows:
        ok = "ok" if r["ok"] else "FAILED"
        lines.append(f"{r['notebook']:<6}{r['section']:<13}{ok:<7}{r['seconds']:>6.0f}s  {r['text']} ({r['source']})")
    return "\n".join(lines)


def run_report(args) -> int:
    from tqdm.auto import tqdm

    out = Path(args.out)
    print(runtime.summary())
    wanted = list(SECTIONS) if args.sections == "all" else [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        print(f"labkit bench: unknown section(s) {unknown}; expected some of {list(SECTIONS)}")
        return 2
    wanted = ["roofline"] + [s for s in SECTIONS if s in wanted and s != "roofline"]  # the roofline first
    roof = copy_roofline_gbps()
    meta = run_meta(roof)
    print(f"device: {meta['device']}" + (f" (cc {meta['cc']}, {meta['sms']} SMs, L2 {meta['l2_mb']} MB)"
                                         if meta["cc"] else ""))
    print("versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v))
    print("copy roofline: " + (f"{roof:.0f} GB/s (device-to-device, read + write)" if roof else
                               timings_need_gpu_message()))
    progress = not getattr(args, "no_progress", False)
    t0, rows = time.monotonic(), []
    for name in tqdm(wanted, desc="labkit bench", disable=not progress):
        rows.append(run_section(name, quick=args.quick, roofline_gbps=roof, progress=progress, out=out, meta=meta,
                                **_section_options(name, args)))
    where = f"{meta['device']}, this run" if roof else "sim mode: checks ran here, figures recorded on a GPU"
    print(f"\n== summary: each notebook's headline figure ({where}; {time.monotonic() - t0:.0f} s in all)")
    print(format_summary(rows))
    if roof or Path(args.out).resolve() != RESULTS_DIR.resolve():  # sim mode writes nothing into data/ by default
        png = save_summary_plot(rows, out, meta if roof else {"device": "recorded"})
        print(f"summary plot -> {png}")
    return 0 if all(r["ok"] for r in rows) else 1


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


def save_summary_plot(rows: list[dict], out: Path, meta: dict) -> Path:
    import matplotlib.pyplot as plt

    from labkit.viz.summary import plot_bench_summary

    source = label(meta) if meta.get("date") else "recorded GPU results"
    fig = plot_bench_summary(rows, title="labkit bench", source=source)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_summary_{slug(meta.get('device', 'gpu'))}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["add_arguments", "format_summary", "run_report", "run_section", "save_summary_plot"]
