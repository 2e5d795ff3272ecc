"""Diagrams of the ideas in notebooks 02 and 03: the online-softmax rescaling, split-K with its
log-sum-exp merge, and a wave of programs over the SMs. They draw what is passed in."""

from __future__ import annotations

import math

import numpy as np


def plot_online_softmax(scores, chunks):
    """The online softmax on ``scores`` cut into ``chunks`` (sizes): the running max after each
    chunk and the factor α = exp(m_old − m_new) that rescales everything summed before it."""
    import matplotlib.pyplot as plt

    s = np.asarray(scores, dtype=np.float64)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [2, 1]})
    ax.bar(range(len(s)), s, color="lightgray", edgecolor="gray", label="score $s_t$")
    start, m, alphas, ms = 0, -math.inf, [], []
    for i, n in enumerate(chunks):
        stop = start + n
        m_new = max(m, float(s[start:stop].max()))
        alpha = math.exp(m - m_new) if m > -math.inf else 0.0
        alphas.append(alpha)
        ms.append(m_new)
        ax.hlines(m_new, start - 0.4, stop - 0.6, color="C3", lw=2, label="running max m" if i == 0 else None)
        ax.axvspan(start - 0.5, stop - 0.5, color=f"C{i % 10}", alpha=0.08)
        ax.text((start + stop - 1) / 2, m_new, f"α={alpha:.2g}", ha="center", va="bottom", fontsize=8, color="C3")
        start, m = stop, m_new
    ax.set_xlabel("token t (shaded: chunks)")
    ax.set_title("the max can only rise; when it does, the old sums are multiplied by α", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax2.bar(range(1, len(chunks) + 1), alphas, color="C3")
    ax2.set_ylim(0, 1.05)
    ax2.set_xlabel("chunk")
    ax2.set_ylabel("α = exp(m_old − m_new)")
    ax2.set_title("α = 1: the max stayed; α < 1: it rose\n(chunk 1: α = 0, nothing summed yet)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_split_k(T: int, num_splits: int, *, heads: int = 2):
    """Split-K: each (head, chunk) program reads T/S tokens and writes a partial (m, l, acc);
    a merge program per head combines its S partials by log-sum-exp."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, Rectangle

    chunk = math.ceil(T / num_splits)
    fig, ax = plt.subplots(figsize=(11, 1.4 + 1.3 * heads))
    for h in range(heads):
        y = (heads - 1 - h) * 1.3
        for s in range(num_splits):
            a, b = min(s * chunk, T), min((s + 1) * chunk, T)
            ax.add_patch(Rectangle((a, y), b - a, 0.6, facecolor=f"C{s % 10}", alpha=0.35, edgecolor="black"))
            ax.text((a + b) / 2, y + 0.3, f"program ({h},{s})\ntokens {a}–{b - 1}", ha="center", va="center", fontsize=7)
            px = T * 1.08 + s * T * 0.06
            ax.add_patch(Rectangle((px, y + 0.1), T * 0.05, 0.4, facecolor=f"C{s % 10}", alpha=0.6))
            ax.add_patch(FancyArrowPatch(((a + b) / 2, y + 0.6), (px + T * 0.025, y + 0.5), arrowstyle="-|>",
                                         mutation_scale=7, color="gray", lw=0.6, connectionstyle="arc3,rad=-0.12"))
        mx = T * 1.1 + num_splits * T * 0.06
        ax.add_patch(Rectangle((mx, y), T * 0.3, 0.6, facecolor="white", edgecolor="C3", lw=1.5))
        ax.text(mx + T * 0.15, y + 0.3, f"merge head {h}\nΣ e^(mᵢ−M) accᵢ / Σ e^(mᵢ−M) lᵢ", ha="center", va="center",
                fontsize=7)
        ax.annotate("", xy=(mx, y + 0.3), xytext=(T * 1.08 + num_splits * T * 0.06 - T * 0.01, y + 0.3),
                    arrowprops=dict(arrowstyle="-|>", color="C3"))
    ax.text(T * 1.08, heads * 1.3 - 0.2, "partials (m, l, acc)", fontsize=8)
    ax.set_xlim(-T * 0.02, T * 1.45 + num_splits * T * 0.06)
    ax.set_ylim(-0.3, heads * 1.3)
    ax.set_yticks([])
    ax.set_xlabel("KV tokens of each head")
    ax.set_title(f"split-K over T = {T} tokens, {num_splits} splits: {heads * num_splits} programs in parallel, "
                 f"then {heads} merges", fontsize=10)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig


def plot_wave(programs: int, sms: int, *, per_sm: int = 1, title: str = ""):
    """Programs scheduled over ``sms`` SMs in waves of ``sms × per_sm``: one column per SM, one row
    per slot of a wave; idle slots of the last wave are left blank."""
    import matplotlib.pyplot as plt

    slots = sms * per_sm
    waves = max(1, math.ceil(programs / slots))
    grid = np.full((waves * per_sm, sms), -1)
    for p in range(programs):
        w, r = divmod(p, slots)
        grid[w * per_sm + r // sms, r % sms] = p
    fig, ax = plt.subplots(figsize=(min(0.25 * sms + 2, 14), 0.35 * waves * per_sm + 1.4))
    ax.imshow(np.ma.masked_less(grid, 0) % 20, cmap="tab20", vmin=0, vmax=19, aspect="auto")
    for w in range(1, waves):
        ax.axhline(w * per_sm - 0.5, color="black", lw=1.5)
    ax.set_xlabel("SM")
    ax.set_ylabel("wave (slots)")
    ax.set_yticks([w * per_sm + (per_sm - 1) / 2 for w in range(waves)], [str(w + 1) for w in range(waves)])
    busy = programs / (waves * slots)
    ax.set_title((title + ": " if title else "") + f"{programs} programs on {sms} SMs × {per_sm}: {waves} wave(s), "
                 f"{100 * busy:.0f}% of the slots busy", fontsize=9)
    fig.tight_layout()
    return fig
