"""Plots for the paged KV cache: memory waste per cache, and the paged kernel's speed per block size."""

from __future__ import annotations

from collections import defaultdict

from labkit.bench.records import Record


def plot_waste(records: list[Record], *, title: str = "KV memory reserved but empty", source: str = ""):
    """Bars: percent of reserved KV slots holding no token, per cache (records of ``waste_records``)."""
    import matplotlib.pyplot as plt

    names = [r.kernel for r in records]
    waste = [100 * r.extra["waste"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bars = ax.bar(names, waste, color=["tab:red"] + ["tab:blue"] * (len(names) - 1))
    ax.bar_label(bars, fmt="%.1f%%", fontsize=8)
    ax.set_ylabel("% of reserved slots empty")
    ax.set_ylim(0, 100)
    ax.axhline(4, color="k", linestyle=":", linewidth=1, label="4% (vLLM's figure)")
    ax.legend(fontsize=8)
    ax.set_title(" — ".join(s for s in (title, source) if s), fontsize=10)
    fig.tight_layout()
    return fig


def relative_speeds(records: list[Record], baseline: str = "contiguous") -> dict[str, dict[int, float]]:
    """``{kernel: {T: baseline time / kernel time}}`` for records of one (B, Hq, Hkv, D, dtype)."""
    base = {r.shape["T"]: r.time_ms for r in records if r.kernel == baseline and r.time_ms}
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for r in records:
        if r.kernel != baseline and r.time_ms and r.shape["T"] in base:
            out[r.kernel][r.shape["T"]] = base[r.shape["T"]] / r.time_ms
    return dict(out)


def plot_block_sizes(records: list[Record], *, baseline: str = "contiguous", title: str = "", source: str = ""):
    """Lines: each kernel's speed relative to ``baseline`` against context length (1.0 = as fast).

    Pass records of one shape family (select B, Hq, Hkv, D and dtype first).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for kernel, row in sorted(relative_speeds(records, baseline).items()):
        xs = sorted(row)
        ax.plot(xs, [row[x] for x in xs], marker="o", label=kernel, linestyle="--" if kernel == "sdpa" else "-")
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.axhline(0.95, color="k", linestyle=":", linewidth=1, label="0.95 (target)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length")
    ax.set_ylabel(f"speed relative to {baseline}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(" — ".join(s for s in (title, source) if s), fontsize=10)
    fig.tight_layout()
    return fig
