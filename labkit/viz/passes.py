"""Where the naive three-pass attention's time goes: a plot of the Records of
:func:`labkit.bench.passes.bench_naive_passes` (live, or recorded on a GPU)."""

from __future__ import annotations

from labkit.attention.naive import PASSES
from labkit.bench.records import Record

COLORS = {"scores": "tab:blue", "softmax": "tab:orange", "output": "tab:green"}


def plot_passes(records: list[Record], *, roofline_gbps: float | None = None, title: str = "", source: str = ""):
    """Two panels against context length, for records of one shape family (one B, Hq, D, dtype).

    Left: each pass's time (µs) stacked, with the three passes run together as a dot.
    Right: each pass's effective GB/s (its own bytes over its own time), with the roofline.
    """
    import matplotlib.pyplot as plt

    timed = [r for r in records if r.time_ms is not None]
    contexts = sorted({r.shape["T"] for r in timed})
    by = {(r.kernel, r.shape["T"]): r for r in timed}
    fig, (ax_t, ax_bw) = plt.subplots(1, 2, figsize=(11, 3.8))
    xs = list(range(len(contexts)))
    bottom = [0.0] * len(contexts)
    width = 0.8 / len(PASSES)
    for i, name in enumerate(PASSES):
        us = [by[(name, T)].time_ms * 1e3 if (name, T) in by else 0.0 for T in contexts]
        ax_t.bar(xs, us, 0.6, bottom=bottom, label=name, color=COLORS[name])
        bottom = [b + u for b, u in zip(bottom, us)]
        bw = [by[(name, T)].gbps if (name, T) in by else 0.0 for T in contexts]
        ax_bw.bar([x + (i - 1) * width for x in xs], bw, width, label=name, color=COLORS[name])
    whole = [(x, by[("naive", T)].time_ms * 1e3) for x, T in zip(xs, contexts) if ("naive", T) in by]
    if whole:
        ax_t.plot(*zip(*whole), "ko", label="all three, timed together")
    if roofline_gbps:
        ax_bw.axhline(roofline_gbps, color="k", linestyle="--", linewidth=1,
                      label=f"copy roofline {roofline_gbps:.0f}")
    for ax, ylabel in ((ax_t, "time (µs)"), (ax_bw, "effective GB/s of the pass")):
        ax.set_xticks(xs, [str(T) for T in contexts])
        ax.set_xlabel("context length")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    if not timed:
        ax_t.text(0.5, 0.5, "no timings to show", ha="center", va="center", transform=ax_t.transAxes)
    fig.suptitle(" — ".join(s for s in (title, source) if s), fontsize=10)
    fig.tight_layout()
    return fig


__all__ = ["plot_passes"]
