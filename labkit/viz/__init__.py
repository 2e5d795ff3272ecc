"""Plots and widgets that display benchmark records (live, or recorded on a GPU)."""

from labkit.viz.plots import (format_table, plot_bandwidth, plot_speedup, recorded, select, speedups,
                              timed_or_recorded)
from labkit.viz.widgets import explorer

__all__ = ["explorer", "format_table", "plot_bandwidth", "plot_speedup", "recorded", "select", "speedups",
           "timed_or_recorded"]
