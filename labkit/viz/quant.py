"""Plots for notebook 08 (a quantized KV cache). They only draw what they are given."""

from __future__ import annotations


def plot_key_channels(layers: list[dict], *, which=(0, 5, 11), title: str = ""):
    """Per-channel absmax of the model's keys (head 0, over every token) for a few layers.

    ``layers``: ``key_channel_stats(...)["layers"]`` (each with ``key_channel_absmax_head0``).
    A channel far above the rest is an outlier: one scale per token must cover it, so the other
    channels of that token get coarse steps.
    """
    import matplotlib.pyplot as plt

    which = [i for i in which if i < len(layers)]
    fig, axes = plt.subplots(1, len(which), figsize=(4 * len(which), 3.2), squeeze=False)
    for ax, i in zip(axes[0], which):
        vals = layers[i]["key_channel_absmax_head0"]
        ax.bar(range(len(vals)), vals, width=1.0, color="tab:blue")
        med = sorted(vals)[len(vals) // 2]
        ax.axhline(med, color="k", linewidth=0.8, linestyle="--", label=f"median {med:.2f}")
        ax.set_title(f"layer {i}: max/median {max(vals) / med:.1f}", fontsize=10)
        ax.set_xlabel("key channel (head dim)")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("max |k| over tokens")
    fig.suptitle(title or "the model's keys, head 0: magnitude per channel", fontsize=11)
    fig.tight_layout()
    return fig


def plot_accuracy(study: dict):
    """Attention-output error per layer (the model's K/V) for each scheme, and the random-K/V error."""
    import matplotlib.pyplot as plt

    att = study["attention"]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for name, errs in att["model"].items():
        line, = ax.plot(range(len(errs)), errs, marker="o", label=f"{name} (random K/V: {att['random'][name]:.1e})")
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("relative error of the output\nvs the fp16 cache")
    ax.set_title("decode attention over the model's own K/V (last position, held-out text)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_pool_tokens(pool_gb: float, *, layers: int, kv_heads: int, head_dim: int, formats=("fp16", "int8", "fp8_e4m3")):
    """Tokens a KV pool of ``pool_gb`` GB holds in each format (all layers, K and V, scales counted)."""
    import matplotlib.pyplot as plt

    from labkit.kvcache.quant import bytes_per_token

    counts = {}
    for f in formats:
        per = layers * bytes_per_token(kv_heads, head_dim, None if f == "fp16" else f)
        counts[f] = pool_gb * 1e9 / per
    fig, ax = plt.subplots(figsize=(5.5, 3))
    bars = ax.bar(list(counts), list(counts.values()), color=["tab:gray", "tab:blue", "tab:orange"][:len(counts)])
    for b, (f, n) in zip(bars, counts.items()):
        ax.annotate(f"{n / 1e3:,.0f}k ({n / counts[formats[0]]:.2f}x)", (b.get_x() + b.get_width() / 2, n),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("tokens in the pool")
    ax.set_title(f"a {pool_gb:g} GB KV pool, {layers} layers × {kv_heads} KV heads × D={head_dim}", fontsize=10)
    fig.tight_layout()
    return fig, counts


def plot_quant_speed(records, *, source: str = ""):
    """Time per decode step against context for each kernel, batch 1 and 8 side by side."""
    import matplotlib.pyplot as plt

    batches = sorted({r.shape["B"] for r in records})
    names = [n for n in ("triton_splitk", "sdpa_best", "triton_int8", "triton_fp8") if any(r.kernel == n for r in records)]
    labels = {"triton_splitk": "fp16 flash-decoding (03)", "sdpa_best": "SDPA, best backend (fp16)",
              "triton_int8": "int8 flash-decoding", "triton_fp8": "fp8 e4m3 flash-decoding"}
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 3.6), squeeze=False)
    for ax, B in zip(axes[0], batches):
        for n in names:
            rs = sorted((r for r in records if r.kernel == n and r.shape["B"] == B and r.time_ms), key=lambda r: r.shape["T"])
            if rs:
                ax.plot([r.shape["T"] for r in rs], [r.time_ms * 1e3 for r in rs], marker="o", label=labels[n])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context T (tokens)")
        ax.set_ylabel("µs per decode step")
        ax.set_title(f"B = {B}, 32 heads, D = 128", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if source:
        fig.suptitle(source, fontsize=9)
    fig.tight_layout()
    return fig


def format_quant_table(records) -> str:
    """One line per (B, T): each kernel's µs and GB/s of its own bytes, the 8-bit kernels' speedups."""
    rows = {}
    for r in records:
        if r.time_ms:
            rows.setdefault((r.shape["B"], r.shape["T"]), {})[r.kernel] = r
    lines = [f"{'B':>2} {'T':>6} | {'fp16 kernel':>18} | {'SDPA best':>18} | {'int8':>18} {'×fp16':>6} {'×SDPA':>6} | "
             f"{'fp8 e4m3':>18} {'×fp16':>6} {'×SDPA':>6}"]
    for (B, T), row in sorted(rows.items()):
        def cell(n):
            r = row.get(n)
            return f"{r.time_ms * 1e3:7.1f} µs {r.gbps:5.0f} GB/s" if r else f"{'—':>18}"

        def sp(n, key):
            r = row.get(n)
            v = r.extra.get(key) if r else None
            return f"{v:5.2f}x" if v else f"{'—':>6}"

        lines.append(f"{B:>2} {T:>6} | {cell('triton_splitk')} | {cell('sdpa_best')} | {cell('triton_int8')} "
                     f"{sp('triton_int8', 'speedup_vs_fp16_kernel')} {sp('triton_int8', 'speedup_vs_sdpa_best')} | "
                     f"{cell('triton_fp8')} {sp('triton_fp8', 'speedup_vs_fp16_kernel')} "
                     f"{sp('triton_fp8', 'speedup_vs_sdpa_best')}")
    return "\n".join(lines)


__all__ = ["format_quant_table", "plot_accuracy", "plot_key_channels", "plot_pool_tokens", "plot_quant_speed"]
