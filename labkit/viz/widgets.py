"""An ipywidgets explorer over benchmark records (works with ipywidgets 7.7, Colab's, and 8).

Only widgets that exist unchanged in both major versions are used (Dropdown, ToggleButtons,
Output, HBox/VBox, ``interactive_output``), and plots are redrawn into an Output widget, which
Colab's custom widget manager and JupyterLab both render.
"""

from __future__ import annotations

from labkit.bench.records import Record
from labkit.viz.plots import plot_bandwidth, plot_speedup, select

SHAPE_KEYS = ("B", "Hq", "Hkv", "D")


def _options(records: list[Record], key: str) -> list:
    values = {r.dtype if key == "dtype" else r.shape.get(key) for r in records}
    return sorted(v for v in values if v is not None)


def explorer(records: list[Record], *, source: str = "", roofline_gbps: float | None = None,
             baselines: tuple[str, ...] = ("naive", "sdpa")):
    """A widget to pick batch, heads, KV heads (GQA ratio), head dim and dtype, and a view:
    bandwidth against context length, or speedup over a baseline. Returns the widget."""
    import ipywidgets as w
    from IPython.display import display
    import matplotlib.pyplot as plt

    pickers = {k: w.Dropdown(options=_options(records, k), description=k) for k in SHAPE_KEYS}
    pickers["dtype"] = w.Dropdown(options=_options(records, "dtype"), description="dtype")
    view = w.ToggleButtons(options=["bandwidth"] + [f"speedup vs {b}" for b in baselines], description="view")
    out = w.Output()

    def redraw(view, **picked):
        dtype = picked.pop("dtype")
        rows = select(records, dtype=dtype, **picked)
        out.clear_output(wait=True)
        with out:
            if not rows:
                print("no records for this combination")
                return
            title = " ".join(f"{k}={v}" for k, v in picked.items()) + f" {dtype}"
            if view == "bandwidth":
                fig = plot_bandwidth(rows, roofline_gbps=roofline_gbps, title=title, source=source)
            else:
                fig = plot_speedup(rows, baseline=view.split()[-1], title=title, source=source)
            display(fig)
            plt.close(fig)

    # interactive_output calls redraw once now and again on every change.
    w.interactive_output(redraw, {"view": view, **pickers})
    return w.VBox([w.HBox(list(pickers.values())), view, out])
