"""Plots of served workloads: the batch-slot timeline, workload lengths, metrics against arrival rate,
and an ipywidgets explorer over recorded sweeps (ipywidgets 7.7 and 8). They only display.
"""

from __future__ import annotations

from collections import defaultdict

from labkit.bench.records import Record
from labkit.serving.bench import METRICS, POLICIES


def slot_timeline(steps, max_batch: int) -> list[tuple[int, object, int, int]]:
    """Which request holds which batch slot when: ``[(slot, request_id, first_step, last_step)]``.

    A request takes the lowest free slot the first step it runs and keeps it while it runs
    in consecutive steps; a slot is idle in a step when no request ran in it.
    """
    holder: dict[object, tuple[int, int]] = {}  # request id -> (slot, first step)
    spans = []
    for i, step in enumerate(steps):
        ran = set(step.ids)
        for rid in [r for r in holder if r not in ran]:  # finished or preempted: the slot frees up
            slot, first = holder.pop(rid)
            spans.append((slot, rid, first, i - 1))
        taken = {s for s, _ in holder.values()}
        for rid in step.ids:
            if rid not in holder:
                slot = next(s for s in range(max(max_batch, len(ran)) + 1) if s not in taken)
                holder[rid] = (slot, i)
                taken.add(slot)
    spans += [(slot, rid, first, len(steps) - 1) for rid, (slot, first) in holder.items()]
    return sorted(spans, key=lambda s: (s[2], s[0]))


def plot_timeline(steps, max_batch: int, *, title: str = "", ax=None):
    """Batch slots over engine steps: a coloured bar per request, white where a slot sits idle."""
    import matplotlib.pyplot as plt

    spans = slot_timeline(steps, max_batch)
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 0.35 * max_batch + 1.2))
    cmap = plt.get_cmap("tab20")
    order = {rid: k for k, rid in enumerate(dict.fromkeys(rid for _, rid, _, _ in spans))}
    for slot, rid, first, last in spans:
        ax.broken_barh([(first, last - first + 1)], (slot - 0.4, 0.8), color=cmap(order[rid] % 20))
    busy = sum(len(s.ids) for s in steps)
    idle = 1 - busy / (max_batch * len(steps)) if steps else 0.0
    ax.set_xlim(0, max(1, len(steps)))
    ax.set_ylim(-0.6, max_batch - 0.4)
    ax.set_yticks(range(max_batch))
    ax.set_xlabel("engine step")
    ax.set_ylabel("batch slot")
    ax.set_title(f"{title}{' — ' if title else ''}{len(steps)} steps, {idle:.0%} of slot-steps idle", fontsize=10)
    ax.figure.tight_layout()
    return ax.figure


def plot_workload(requests, *, title: str = "workload"):
    """Histograms of prompt and output lengths (log-spaced bins)."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(9, 2.8))
    for ax, values, name in ((axes[0], [len(r.prompt) for r in requests], "prompt tokens"),
                             (axes[1], [r.max_new_tokens for r in requests], "output tokens")):
        bins = np.geomspace(1, max(values) + 1, 20)
        ax.hist(values, bins=bins, color="tab:blue", alpha=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("requests")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _series(records: list[Record], metric: str, max_batch=None) -> dict[str, tuple[list, list]]:
    out = defaultdict(lambda: ([], []))
    for r in sorted(records, key=lambda r: (r.shape.get("rate") is None, r.shape.get("rate") or 0)):
        rate, value = r.shape.get("rate"), r.extra.get(metric)
        if rate is None or value is None or (max_batch is not None and r.shape.get("max_batch") != max_batch):
            continue
        out[r.kernel][0].append(rate)
        out[r.kernel][1].append(value)
    return dict(out)


def _axis_label(metric: str, unit: str) -> str:
    label, kind = METRICS[metric]
    if kind == "rate":
        return label + (" per s" if unit == "s" else " per step")
    if kind == "time":
        return label + (" (s)" if unit == "s" else " (steps)")
    return label


def plot_rate_sweep(records: list[Record], *, metrics=("throughput", "ttft_p99", "tpot_p99"), max_batch=None,
                    source: str = ""):
    """Each metric against the arrival rate, one line per policy."""
    import matplotlib.pyplot as plt

    unit = next((r.extra.get("unit") for r in records), "s")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for policy in POLICIES:
            xs, ys = _series(records, metric, max_batch).get(policy, ([], []))
            if xs:
                ax.plot(xs, ys, marker="o", label=policy)
        ax.set_xlabel("arrival rate (requests per " + ("s)" if unit == "s" else "step)"))
        ax.set_ylabel(_axis_label(metric, unit), fontsize=8)
        if METRICS[metric][1] == "time":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(source or "", fontsize=10)
    fig.tight_layout()
    return fig


def format_sweep(records: list[Record]) -> str:
    """A plain-text table of a sweep: per rate, each policy's throughput, TTFT and TPOT."""
    unit = next((r.extra.get("unit") for r in records), "s")
    k = 1e3 if unit == "s" else 1.0
    tu = "ms" if unit == "s" else "steps"
    head = (f"{'rate':>8} {'policy':<11}{'tok/' + ('s' if unit == 's' else 'step'):>10}"
            f"{'TTFT p50':>11}{'TTFT p99':>11}{'TPOT p50':>11}{'TPOT p99':>11}{'occup.':>8}  ({tu})")
    lines = [head, "-" * len(head)]
    for r in sorted(records, key=lambda r: (r.shape.get("rate") is None, r.shape.get("rate") or 0, r.kernel)):
        e, rate = r.extra, r.shape.get("rate")
        lines.append(f"{'all@0' if rate is None else format(rate, '.3g'):>8} {r.kernel:<11}{e['throughput']:10.1f}"
                     f"{e['ttft_p50'] * k:11.1f}{e['ttft_p99'] * k:11.1f}{e['tpot_p50'] * k:11.2f}"
                     f"{e['tpot_p99'] * k:11.2f}{e['occupancy']:8.0%}")
    return "\n".join(lines)


def explorer(records: list[Record], *, source: str = ""):
    """A widget: pick a metric and the maximum batch; shows it against arrival rate for both policies."""
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    metric = w.Dropdown(options=list(METRICS), value="ttft_p99", description="metric")
    batches = sorted({r.shape.get("max_batch") for r in records if r.shape.get("max_batch") is not None})
    batch = w.Dropdown(options=batches or [None], description="max batch")
    out = w.Output()

    def redraw(metric, max_batch):
        out.clear_output(wait=True)
        with out:
            if not records:
                print("no recorded results")
                return
            fig = plot_rate_sweep(records, metrics=(metric,), max_batch=max_batch, source=source)
            display(fig)
            plt.close(fig)

    w.interactive_output(redraw, {"metric": metric, "max_batch": batch})
    return w.VBox([w.HBox([metric, batch]), out])
