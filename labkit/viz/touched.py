"""Which elements each block, thread or program touched, drawn from what a kernel wrote.

A warm-up kernel records, for every element it handled, the id of the thread or program that
handled it (an int array, −1 where nothing was written). :func:`plot_touched` colours each
element by that id and prints the id in it, GPU-Puzzles style: a wrong mask or stride shows
up as a hole, a smear or a stripe in the wrong place.
"""

from __future__ import annotations

import numpy as np


def plot_touched(ids, *, title: str = "", what: str = "program", row_label: str = "row", col_label: str = "column",
                 tiles: tuple[int, int] | None = None, ax=None):
    """Draw ``ids`` [rows, cols] (−1: untouched, shown white with a ✗). ``tiles=(bm, bn)`` draws tile edges."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    a = np.asarray(ids.detach().cpu() if hasattr(ids, "detach") else ids)
    rows, cols = a.shape
    if ax is None:
        _, ax = plt.subplots(figsize=(min(0.45 * cols + 1.5, 14), min(0.45 * rows + 1.2, 8)))
    n = max(int(a.max()) + 1, 1)
    base = plt.get_cmap("tab20" if n > 10 else "tab10")
    cmap = ListedColormap([base(i % base.N) for i in range(n)])
    shown = np.ma.masked_less(a, 0)
    ax.imshow(shown, cmap=cmap, vmin=-0.5, vmax=n - 0.5, aspect="equal")
    if rows * cols <= 900:
        for (r, c), v in np.ndenumerate(a):
            ax.text(c, r, "✗" if v < 0 else str(v), ha="center", va="center", fontsize=7,
                    color="red" if v < 0 else "black")
    if tiles:
        for r in range(0, rows + 1, tiles[0]):
            ax.axhline(r - 0.5, color="black", lw=1.2)
        for c in range(0, cols + 1, tiles[1]):
            ax.axvline(c - 0.5, color="black", lw=1.2)
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows))
    ax.tick_params(labelsize=6)
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    untouched = int((a < 0).sum())
    ax.set_title((title + "\n" if title else "") + f"each element: the {what} that wrote it"
                 + (f"; {untouched} never written (✗)" if untouched else ""), fontsize=9)
    return ax.figure
