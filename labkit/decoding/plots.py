"""Figures and tables for speculative decoding's records (see :mod:`labkit.decoding.bench`)."""

from __future__ import annotations

from labkit.bench.records import Record


def _label(r: Record) -> str:
    parts = [r.shape.get("sampling", "?"), "CUDA graphs" if r.extra.get("graphs") else "eager"]
    if r.extra.get("impl", "sdpa") != "sdpa":
        parts.append(r.extra["impl"])
    return ", ".join(parts)


def _groups(records: list[Record]) -> dict[str, list[Record]]:
    """Speculative records by configuration (sampling, graphs or eager, attention), each sorted by gamma."""
    out: dict[str, list[Record]] = {}
    for r in records:
        if r.kernel == "speculative":
            out.setdefault(_label(r), []).append(r)
    return {k: sorted(v, key=lambda r: r.shape["gamma"]) for k, v in sorted(out.items())}


def _acceptance_by_sampling(records: list[Record]) -> dict[str, list[Record]]:
    # Acceptance doesn't depend on graphs or the attention kernel: one record per (sampling, gamma).
    best: dict[tuple, Record] = {}
    for r in records:
        if r.kernel != "speculative":
            continue
        key = (r.shape.get("sampling", "?"), r.shape["gamma"])
        rank = (bool(r.extra.get("graphs")), r.extra.get("impl", "sdpa") == "sdpa")
        if key not in best or rank > best[key][0]:
            best[key] = (rank, r)
    out: dict[str, list[Record]] = {}
    for (sampling, _), (_, r) in sorted(best.items(), key=lambda kv: (kv[0][0] != "greedy", kv[0])):
        out.setdefault(sampling, []).append(r)
    return out


def plot_gamma_sweep(records: list[Record], timed: list[Record] | None = None, *, source: str = "",
                     title: str = "speculative decoding"):
    """Left: tokens per target pass vs gamma, measured and (1 − α^(γ+1))/(1 − α) at the measured α.
    Right: wall-clock speedup over plain decoding vs gamma, per configuration, from ``timed``
    (or ``records``) when they carry times.
    """
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(11, 3.8))
    top = 1
    for i, (sampling, rows) in enumerate(_acceptance_by_sampling(records).items()):
        color = f"C{i}"
        gammas = [r.shape["gamma"] for r in rows]
        top = max(top, max(gammas))
        ax_t.plot(gammas, [r.extra["tokens_per_pass"] for r in rows], "o-", color=color, label=f"measured, {sampling}")
        ax_t.plot(gammas, [r.extra["expected_tokens_per_pass"] for r in rows], "s--", color=color, alpha=0.6,
                  label=f"(1 − α^(γ+1))/(1 − α), {sampling}")
        for r in rows:
            ax_t.annotate(f"α={r.extra['alpha']:.2f}", (r.shape["gamma"], r.extra["tokens_per_pass"]),
                          textcoords="offset points", xytext=(4, -12), fontsize=7, color=color)
    ax_t.plot([1, top], [2, top + 1], ":", color="gray", label="γ + 1 (every draft accepted)")
    ax_t.set_xlabel("γ (draft tokens per round)")
    ax_t.set_ylabel("tokens per target pass")
    ax_t.legend(fontsize=7)
    ax_t.grid(alpha=0.3)
    groups = {k: [r for r in v if r.extra.get("speedup")] for k, v in _groups(timed or records).items()}
    groups = {k: v for k, v in groups.items() if v}
    if groups:
        for label, rows in groups.items():
            ax_s.plot([r.shape["gamma"] for r in rows], [r.extra["speedup"] for r in rows], "o-", label=label)
        ax_s.axhline(1.0, color="k", linewidth=0.8)
        ax_s.legend(fontsize=7)
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
    head = f"{'decoding':<34}{'sampling':<9}{'ms/token':>9}{'speedup':>9}{'alpha':>7}{'tok/pass':>9}{'formula':>9}"
    lines = [head, "-" * len(head)]
    rows = [r for r in records if r.kernel in ("target", "speculative")]
    # Grouped by configuration (sampling, CUDA graphs or eager, attention), plain decoding first.
    rows.sort(key=lambda r: (r.shape.get("sampling") != "greedy", r.extra.get("graphs") is False,
                             r.extra.get("impl", "sdpa") != "sdpa", r.extra.get("impl", "sdpa"),
                             r.shape.get("gamma", 0)))
    for r in rows:
        name = "plain (target only)" if r.kernel == "target" else f"speculative γ={r.shape['gamma']}"
        if r.extra.get("graphs") is False and r.time_ms is not None:
            name += ", eager"
        if r.extra.get("impl", "sdpa") != "sdpa":
            name += f", {r.extra['impl']}"
        ms = f"{r.time_ms:9.3f}" if r.time_ms else f"{'—':>9}"
        sp = f"{r.extra['speedup']:8.2f}×" if r.extra.get("speedup") else f"{'—':>9}"
        alpha = f"{r.extra['alpha']:7.2f}" if "alpha" in r.extra else f"{'—':>7}"
        form = f"{r.extra['expected_tokens_per_pass']:9.2f}" if "expected_tokens_per_pass" in r.extra else f"{'—':>9}"
        lines.append(f"{name:<34}{r.shape.get('sampling', ''):<9}{ms}{sp}{alpha}{r.extra['tokens_per_pass']:9.2f}{form}")
    return "\n".join(lines)


__all__ = ["format_speculative_table", "plot_gamma_sweep", "plot_pass_cost"]
