"""A picture of top-p sampling without a sort: the kept set is everything above one threshold.

viz only draws what it is given: the logits of one row, the temperature and top_p. The
threshold shown is computed the slow, obvious way (sorting), to show what the kernel finds
by bisection without sorting.
"""

from __future__ import annotations

import torch


def plot_top_p_threshold(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 0.9, *, show: int = 40,
                         title: str | None = None):
    """Left: the row's probabilities in vocabulary order, the kept tokens coloured, the threshold
    logit as a line. Right: the mass ``Σ_{x ≥ t} p`` against the threshold ``t``, a decreasing step
    function that bisection searches for the last ``t`` where it still reaches ``top_p``."""
    import matplotlib.pyplot as plt

    x = logits.detach().double().cpu().reshape(-1)[:show] / temperature
    p = torch.softmax(x, -1)
    order = torch.argsort(x, descending=True)
    cum = torch.cumsum(p[order], 0)
    n_keep = int((cum - p[order] < top_p).sum())
    t = float(x[order][n_keep - 1])
    kept = x >= t

    fig, (ax_p, ax_m) = plt.subplots(1, 2, figsize=(11, 3.6))
    ax_p.bar(range(len(p)), p.numpy(), color=["tab:blue" if k else "lightgray" for k in kept.tolist()])
    ax_p.set_xlabel("token id (vocabulary order: no sort needed)")
    ax_p.set_ylabel("probability")
    ax_p.set_title(f"kept: {int(kept.sum())} tokens with logit/T ≥ t (blue)")

    lo = max(float(x.min()), t - 2 * (float(x.max()) - t) - 1.0)  # zoom on the steps near the threshold
    ts = torch.linspace(lo, float(x.max()) + 0.3, 400, dtype=torch.float64)
    mass = torch.stack([(p * (x >= v)).sum() for v in ts])
    ax_m.step(ts.numpy(), mass.numpy(), where="post", color="tab:blue")
    ax_m.axhline(top_p, color="tab:red", ls="--", lw=1, label=f"top_p = {top_p}")
    ax_m.axvline(t, color="tab:green", ls=":", lw=1.5, label=f"threshold t = {t:.2f}")
    ax_m.set_xlabel("threshold t (logit / T)")
    ax_m.set_ylabel("mass of tokens with logit/T ≥ t")
    ax_m.set_title("bisection: the largest t whose mass still reaches top_p")
    ax_m.legend(loc="lower left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


__all__ = ["plot_top_p_threshold"]
