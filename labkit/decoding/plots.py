"""Figures and tables for speculative decoding's records (see :mod:`labkit.decoding.bench`)."""

from __future__ import annotations

from labkit.bench.records import Record


def _spec(records, sampling=None):
    rows = [r for r in records if r.kernel == "speculative" and (sampling is None or r.shape.get("sampling") == sampling)]
    return sorted(rows, key=lambda r: r.shape["gamma"])


def plot_gamma_sweep(records: list[Record], timed: list[Record] | None = None, *, source: str = "",
                     title: str = "speculative decoding"):
    """Left: tokens per target pass vs gamma, measured and (1 − α^(γ+1))/(1 − α) at the measured α.
    Right: wall-clock speedup over plain decoding vs gamma, from ``timed`` (or ``records``) when they have times.
    """
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(11, 3.8))
    spec = _spec(records)
    gammas = [r.shape["gamma"] for r in spec]
    ax_t.plot(gammas, [r.extra["tokens_per_pass"] for r in spec], "o-", label="measured")
    ax_t.plot(gammas, [r.extra["expected_tokens_per_pass"] for r in spec], "s--", label="(1 − α^(γ+1))/(1 − α)")
    ax_t.plot(gammas, [g + 1 for g in gammas], ":", color="gray", label="γ + 1 (every draft accepted)")
    for r in spec:
        ax_t.annotate(f"α={r.extra['alpha']:.2f}", (r.shape["gamma"], r.extra["tokens_per_pass"]),
                      textcoords="offset points", xytext=(4, -12), fontsize=7)
    ax_t.set_xlabel("γ (draft tokens per round)")
    ax_t.set_ylabel("tokens per target pass")
    ax_t.legend(fontsize=8)
    ax_t.grid(alpha=0.3)
    with_times = [r for r in _spec(timed or records) if r.extra.get("speedup")]
    if with_times:
        for sampling in sorted({r.shape.get("sampling") for r in with_times}):
            rows = [r for r in with_times if r.shape.get("sampling") == sampling]
            ax_s.plot([r.shape["gamma"] for r in rows], [r.extra["speedup"] for r in rows], "o-", label=sampling)
        ax_s.axhline(1.0, color="k", linewidth=0.8)
        ax_s.legend(fontsize=8)
    else:
        ax_s.text(0.5, 0.5, "no timings: sim mode and no recorded GPU results", ha="center", va="center",
                  transform=ax_s.transAxes)
    ax_s.set_xlabel("γ (draft tokens per round)")
    ax_s.set_ylabel("speedup over plain decoding")
    ax_s.grid(alpha=0.3)
    ax_s.set_title(source, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_pass_cost(records: list[Record], *, source: str = ""):
    """Time of one cached forward pass against the number of new tokens S, per model."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name in sorted({r.kernel for r in records}):
        rows = sorted((r for r in records if r.kernel == name and r.time_ms), key=lambda r: r.shape["S"])
        if rows:
            layers = rows[0].extra.get("layers")
            ax.plot([r.shape["S"] for r in rows], [r.time_ms * 1e3 for r in rows], "o-",
                    label=f"{name} ({layers} layers)" if layers else name)
    ax.set_xlabel("new tokens in the pass (S)")
    ax.set_ylabel("time per pass (µs)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(" — ".join(s for s in ("one forward pass at batch 1", source) if s), fontsize=10)
    fig.tight_layout()
    return fig


def format_speculative_table(records: list[Record]) -> str:
    """Plain text: configuration, ms per token, speedup, alpha, tokens per pass and the formula's value."""
    head = f"{'decoding':<22}{'sampling':<10}{'ms/token':>9}{'speedup':>9}{'alpha':>7}{'tok/pass':>9}{'formula':>9}"
    lines = [head, "-" * len(head)]
    for r in sorted(records, key=lambda r: (r.shape.get("sampling", ""), r.shape.get("gamma", 0))):
        if r.kernel not in ("target", "speculative"):
            continue
        name = "plain (target only)" if r.kernel == "target" else f"speculative γ={r.shape['gamma']}"
        if r.extra.get("impl", "sdpa") != "sdpa":
            name += f" [{r.extra['impl']}]"
        if r.extra.get("graphs") is False and r.time_ms is not None:
            name += " eager"
        ms = f"{r.time_ms:9.3f}" if r.time_ms else f"{'—':>9}"
        sp = f"{r.extra['speedup']:8.2f}×" if r.extra.get("speedup") else f"{'—':>9}"
        alpha = f"{r.extra['alpha']:7.2f}" if "alpha" in r.extra else f"{'—':>7}"
        form = f"{r.extra['expected_tokens_per_pass']:9.2f}" if "expected_tokens_per_pass" in r.extra else f"{'—':>9}"
        lines.append(f"{name:<22}{r.shape.get('sampling', ''):<10}{ms}{sp}{alpha}{r.extra['tokens_per_pass']:9.2f}{form}")
    return "\n".join(lines)


__all__ = ["format_speculative_table", "plot_gamma_sweep", "plot_pass_cost"]
