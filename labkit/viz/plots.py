"""Matplotlib plots of benchmark records: time and GB/s against context length with the copy
roofline drawn, and speedup bars. They only display records; they never measure.

In sim mode live records carry no times, so :func:`recorded` swaps in the recorded GPU
results from ``data/results/`` and every plot says which GPU and date they come from.
"""

from __future__ import annotations

from collections import defaultdict

from labkit.bench.records import Record, label, load_results


def recorded(pattern: str) -> tuple[list[Record], dict | None]:
    """Records and meta of the newest recorded results file matching ``pattern`` (``([], None)`` if none)."""
    results = load_results(pattern)
    if not results:
        return [], None
    # a GPU's record before one made on the CPU (sim mode), then the newest
    newest = max(results, key=lambda r: (str(r["meta"].get("device", "cpu")).lower() not in ("cpu", "cpu (sim)"),
                                         str(r["meta"].get("date", ""))))
    return newest["records"], newest["meta"]


def timed_or_recorded(records: list[Record], pattern: str) -> tuple[list[Record], str]:
    """``records`` if they carry times (a GPU run), else the recorded GPU results, with a label."""
    if any(r.time_ms is not None for r in records):
        return records, "this run"
    rec, meta = recorded(pattern)
    if meta is None:
        return [], "no timings: sim mode, and no recorded GPU results match " + pattern
    return rec, "recorded on " + label(meta)


def select(records: list[Record], **where) -> list[Record]:
    """Records whose shape (or dtype/kernel) matches every ``key=value`` in ``where``."""
    def ok(r: Record) -> bool:
        for key, want in where.items():
            have = getattr(r, key) if key in ("kernel", "dtype") else r.shape.get(key)
            if want is not None and have != want:
                return False
        return True
    return [r for r in records if ok(r)]


def _series(records: list[Record], x: str, metric: str) -> dict[str, tuple[list, list]]:
    out = defaultdict(lambda: ([], []))
    for r in sorted(records, key=lambda r: r.shape.get(x, 0)):
        value = getattr(r, metric)
        if value is not None:
            out[r.kernel][0].append(r.shape.get(x))
            out[r.kernel][1].append(value)
    return dict(out)


def plot_bandwidth(records: list[Record], *, x: str = "T", roofline_gbps: float | None = None,
                   title: str = "", source: str = ""):
    """Two panels: time (µs) and effective GB/s per kernel against ``x``, the roofline as a line."""
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_bw) = plt.subplots(1, 2, figsize=(11, 3.8))
    for kernel, (xs, ms) in _series(records, x, "time_ms").items():
        ax_t.plot(xs, [m * 1e3 for m in ms], marker="o", label=kernel)
    for kernel, (xs, bw) in _series(records, x, "gbps").items():
        ax_bw.plot(xs, bw, marker="o", label=kernel)
    if roofline_gbps:
        ax_bw.axhline(roofline_gbps, color="k", linestyle="--", linewidth=1, label=f"copy roofline {roofline_gbps:.0f}")
    for ax, ylabel in ((ax_t, "time (µs)"), (ax_bw, "effective GB/s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length" if x == "T" else x)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_t.set_yscale("log")
    ax_bw.legend(fontsize=8)
    fig.suptitle(" — ".join(s for s in (title, source) if s), fontsize=10)
    fig.tight_layout()
    return fig


def speedups(records: list[Record], baseline: str, *, x: str = "T") -> dict[str, dict]:
    """``{kernel: {x_value: baseline_time / kernel_time}}`` over records that share a shape."""
    base = {tuple(sorted(r.shape.items())): r.time_ms for r in records if r.kernel == baseline and r.time_ms}
    out: dict[str, dict] = defaultdict(dict)
    for r in records:
        ref = base.get(tuple(sorted(r.shape.items())))
        if r.kernel != baseline and ref and r.time_ms:
            out[r.kernel][r.shape.get(x)] = ref / r.time_ms
    return dict(out)


def plot_speedup(records: list[Record], *, baseline: str = "naive", x: str = "T", title: str = "", source: str = ""):
    """Grouped bars: each kernel's speedup over ``baseline`` at each ``x``."""
    import matplotlib.pyplot as plt

    table = speedups(records, baseline, x=x)
    xs = sorted({v for row in table.values() for v in row})
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / max(1, len(table))
    for i, (kernel, row) in enumerate(sorted(table.items())):
        pos = [j + i * width for j in range(len(xs))]
        bars = ax.bar(pos, [row.get(v, 0) for v in xs], width, label=kernel)
        ax.bar_label(bars, fmt="%.1f×", fontsize=7)
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.set_xticks([j + width * (len(table) - 1) / 2 for j in range(len(xs))], [str(v) for v in xs])
    ax.set_xlabel("context length" if x == "T" else x)
    ax.set_ylabel(f"speedup over {baseline}")
    ax.legend(fontsize=8)
    ax.set_title(" — ".join(s for s in (title, source) if s), fontsize=10)
    fig.tight_layout()
    return fig


def format_table(records: list[Record], *, baselines: tuple[str, ...] = ("naive", "sdpa")) -> str:
    """A plain-text table: kernel, shape, time, GB/s, % roofline and speedups over ``baselines``."""
    by_shape = defaultdict(dict)
    for r in records:
        by_shape[tuple(sorted(r.shape.items())) + (r.dtype,)][r.kernel] = r
    widths = [max(10, len(b) + 5) for b in baselines]  # a long baseline name keeps a space before it
    head = f"{'kernel':<14}{'shape':<34}{'dtype':<9}{'µs':>9}{'GB/s':>8}{'%roof':>7}" + "".join(
        f"{'vs ' + b:>{w}}" for b, w in zip(baselines, widths))
    lines = [head, "-" * len(head)]
    for key, row in by_shape.items():
        for kernel, r in row.items():
            shape = " ".join(f"{k}={v}" for k, v in r.shape.items())
            t = f"{r.time_ms * 1e3:9.1f}" if r.time_ms else f"{'—':>9}"
            bw = f"{r.gbps:8.0f}" if r.gbps else f"{'—':>8}"
            pct = f"{r.pct_roofline:7.1f}" if r.pct_roofline else f"{'—':>7}"
            rel = "".join(f"{row[b].time_ms / r.time_ms:{w - 1}.2f}×" if b in row and r.time_ms and row[b].time_ms
                          else f"{'—':>{w}}" for b, w in zip(baselines, widths))
            lines.append(f"{kernel:<14}{shape:<34}{r.dtype:<9}{t}{bw}{pct}{rel}")
    return "\n".join(lines)
