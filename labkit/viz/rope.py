"""A picture of RoPE: each pair of head dimensions rotates with position, at its own speed."""

from __future__ import annotations

import torch

from labkit.rope import apply_rope, rope_tables


def plot_rope_rotation(head_dim: int = 16, positions: int = 24, pairs: tuple[int, ...] | None = None,
                       base: float = 10000.0, seed: int = 0):
    """Rotate one random vector at positions 0 … ``positions`` - 1 and draw what happens.

    Left: pair i = (x[i], x[i + D/2]) of the rotated vector in its plane, one point per
    position — fast pairs (small i) go round, slow pairs (large i) barely move. Right: the
    score ⟨R(p)q, R(p + Δ)k⟩ of a fixed q, k against p for a few distances Δ: flat lines,
    because RoPE scores depend only on the distance.
    """
    import matplotlib.pyplot as plt

    half = head_dim // 2
    pairs = pairs if pairs is not None else tuple(sorted({0, 1, half // 2, half - 1}))
    cos, sin = rope_tables(2 * positions + 8, head_dim, base=base, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, head_dim, generator=g, dtype=torch.float64)
    p = torch.arange(positions)
    rotated = apply_rope(q.expand(positions, head_dim), p, cos, sin)  # [positions, D]

    fig, (ax_pairs, ax_scores) = plt.subplots(1, 2, figsize=(11, 4))
    for i in pairs:
        xs, ys = rotated[:, i].numpy(), rotated[:, i + half].numpy()
        line, = ax_pairs.plot(xs, ys, marker="o", markersize=3, linewidth=0.8,
                              label=f"pair {i}: θ = {base ** (-2 * i / head_dim):.3g} rad/position")
        ax_pairs.annotate("p=0", (xs[0], ys[0]), fontsize=7, color=line.get_color())
    ax_pairs.set_aspect("equal")
    ax_pairs.axhline(0, color="k", linewidth=0.5)
    ax_pairs.axvline(0, color="k", linewidth=0.5)
    ax_pairs.set_xlabel("x[i] (first half)")
    ax_pairs.set_ylabel("x[i + D/2] (second half)")
    ax_pairs.set_title(f"q rotated at positions 0…{positions - 1} (D = {head_dim})", fontsize=10)
    ax_pairs.legend(fontsize=7, loc="lower left")

    for delta in (0, 1, 4, positions // 2):
        scores = (apply_rope(q.expand(positions, head_dim), p, cos, sin)
                  * apply_rope(k.expand(positions, head_dim), p + delta, cos, sin)).sum(-1)
        ax_scores.plot(p.numpy(), scores.numpy(), marker=".", label=f"Δ = {delta}")
    ax_scores.set_xlabel("query position p")
    ax_scores.set_ylabel("⟨R(p)q, R(p+Δ)k⟩")
    ax_scores.set_title("scores depend only on the distance Δ", fontsize=10)
    ax_scores.legend(fontsize=7)
    ax_scores.grid(alpha=0.3)
    fig.tight_layout()
    return fig


__all__ = ["plot_rope_rotation"]
