"""The summary plot of ``labkit bench``: each notebook's headline ratio on one chart.

Each row is a section's headline (see :mod:`labkit.bench.sections`): a ratio over a baseline
("× SDPA", "× static throughput", …) drawn as a bar with its text beside it, against a line at
1× (as fast as the baseline). Rows without a ratio (the copy roofline) are listed in the title.
"""

from __future__ import annotations

import textwrap


def plot_bench_summary(rows: list[dict], *, title: str = "labkit bench", source: str = ""):
    """A matplotlib figure of ``rows`` ({"section", "notebook", "value", "unit", "text"}); returns it."""
    import matplotlib.pyplot as plt

    bars = [r for r in rows if r.get("value")]
    other = [f"{r['section']}: {r['text']}" for r in rows if not r.get("value") and r.get("text")]
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.7 * max(1, len(bars))))
    labels = [f"{r['notebook']} {r['section']}\n({r['unit']})" for r in bars]
    values = [r["value"] for r in bars]
    ax.barh(range(len(bars)), values, color="tab:blue", alpha=0.8)
    ax.axvline(1.0, color="black", linewidth=1, linestyle="--")
    ax.set_yticks(range(len(bars)), labels)
    ax.invert_yaxis()
    top = max(values + [1.0])
    for i, r in enumerate(bars):
        ax.text(r["value"] + 0.02 * top, i, f"{r['value']:.2f}×", va="center", fontsize=9)
    ax.set_xlim(0, top * 1.25)
    ax.set_xlabel("headline ratio over each notebook's baseline (1× = as fast)")
    heading = title + (f" — {source}" if source else "")
    notes = [textwrap.fill(line, 110) for line in other]  # a headline is a sentence: wrap it, never clip it
    ax.set_title("\n".join([heading, *notes]), fontsize=10)
    fig.tight_layout()
    return fig


__all__ = ["plot_bench_summary"]
