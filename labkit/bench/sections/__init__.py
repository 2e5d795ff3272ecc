"""``labkit bench``'s sections: one per part of the course, each runnable alone.

A section is a module with

* ``TITLE`` (str), ``NOTEBOOKS`` (str, e.g. ``"05"``), ``RESULTS`` (the records' file stem:
  ``data/results/<RESULTS>_<gpu>.json``);
* ``run(quick: bool = False, *, roofline_gbps=None, progress=True) -> list[Record]``: on a GPU,
  check and time the kernels (``quick``: a first look, a few minutes in all); in sim mode, check
  them at small sizes (records without times). Raises :class:`SectionFailed` (carrying the
  records it has) when a kernel gives a wrong answer;
* ``summary(records) -> dict | None``: the notebook's headline figure from ``records`` (this
  run's, or the recorded GPU results in sim mode): ``{"figure", "value", "unit", "text"}``,
  ``value`` a ratio ("× a baseline") where there is one, for the summary plot;
* ``show(records, source)`` (optional): print the section's table.

The notebooks' benchmark cells call the same ``run``, then :func:`measured_or_recorded`, ``show``
and ``summary``.

**Adding a section** (e.g. notebook 08's ``quant``): write ``labkit/bench/sections/quant.py``
with the names above and add one line to :data:`SECTIONS`.
"""

from __future__ import annotations

import importlib

SECTIONS = {  # name -> module, in the order the report runs and prints them
    "roofline": "labkit.bench.sections.roofline",
    "passes": "labkit.bench.sections.passes",
    "attention": "labkit.bench.sections.attention",
    "rope": "labkit.bench.sections.rope",
    "paged": "labkit.bench.sections.paged",
    "speculative": "labkit.bench.sections.speculative",
    "sampling": "labkit.bench.sections.sampling",
    "serving": "labkit.bench.sections.serving",
    "quant": "labkit.bench.sections.quant",
}


class SectionFailed(Exception):
    """A section's kernels gave wrong answers; ``records`` holds what it measured before."""

    def __init__(self, failures: list[str], records=None):
        super().__init__("; ".join(failures))
        self.failures, self.records = list(failures), list(records or [])


def load_section(name: str):
    """The module of section ``name`` (see :data:`SECTIONS`)."""
    if name not in SECTIONS:
        raise ValueError(f"unknown section {name!r}; expected some of {list(SECTIONS)}")
    return importlib.import_module(SECTIONS[name])


def measured_or_recorded(name: str, records) -> tuple[list, str]:
    """``(records, source)``: ``records`` if they carry times (a GPU run), else section ``name``'s
    newest recorded GPU results in ``data/results`` and where they come from. What a notebook's
    benchmark cell shows after ``run``::

        records = paged.run(quick=True)
        shown, source = measured_or_recorded("paged", records)
        paged.show(shown, source); print(paged.summary(shown)["text"])
    """
    from labkit.bench.records import label
    from labkit.viz.plots import recorded

    if any(r.time_ms is not None or (r.kernel == "copy" and r.gbps) for r in records):
        return list(records), "this run"
    shown, meta = recorded(f"{load_section(name).RESULTS}_*.json")
    return shown, (f"recorded on {label(meta)}" if meta else "no recorded GPU results")


def headline(text: str, value: float | None = None, unit: str = "", figure: str = "") -> dict:
    """A summary row: what is measured (``figure``), a number to plot (``value``, ``unit``) and the text."""
    return {"figure": figure, "value": value, "unit": unit, "text": text}


__all__ = ["SECTIONS", "SectionFailed", "headline", "load_section", "measured_or_recorded"]
