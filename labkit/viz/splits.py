"""Why flash-decoding splits the sequence: SM utilisation against the number of splits."""

from __future__ import annotations

from labkit.attention.splits import GPU_SMS, sm_utilisation


def plot_sm_utilisation(heads=(12, 32), gpus=("T4", "H100"), *, batch: int = 1, max_splits: int = 24):
    """One panel per GPU: the fraction of SM time busy for ``batch × heads × splits`` equal
    programs (one per SM at a time), against ``splits``, one line per head count."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(gpus), figsize=(5 * len(gpus), 3.4), sharey=True, squeeze=False)
    splits = list(range(1, max_splits + 1))
    for ax, gpu in zip(axes[0], gpus):
        sms = GPU_SMS[gpu]
        for h in heads:
            ax.plot(splits, [100 * sm_utilisation(batch * h * s, sms) for s in splits], marker="o", markersize=3,
                    label=f"{batch * h} (sequence, head) pairs")
        ax.set_title(f"{gpu}: {sms} SMs", fontsize=10)
        ax.set_xlabel("splits per sequence")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("SMs busy (%)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig
