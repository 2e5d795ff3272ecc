"""Benchmark results as plain records, saved as JSON under ``data/results/``.

A results file holds one run: ``{"meta": {device, cc, date, versions, mode, roofline_gbps},
"records": [...]}``. Plots and widgets only display what these files (or a live run) hold.
"""

from __future__ import annotations

import datetime as _dt
import glob
import json
import os
import platform
import re
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from labkit import runtime
from labkit.paths import ROOT

RESULTS_DIR = ROOT / "data" / "results"


@dataclass
class Record:
    """One kernel at one shape: time, effective GB/s and percent of the copy roofline."""

    kernel: str  # implementation name, e.g. "triton_splitk"
    shape: dict  # e.g. {"B": 1, "Hq": 32, "Hkv": 32, "T": 8192, "D": 128}
    dtype: str  # "float16", "float32", ...
    bytes: int  # bytes the kernel must move (the bytes model)
    time_ms: float | None = None  # median, CUDA events; None in sim mode
    gbps: float | None = None  # bytes / time
    pct_roofline: float | None = None  # gbps / copy roofline measured in the same run
    extra: dict = field(default_factory=dict)  # anything else: splits, speedups, launches


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """Versions of everything a result depends on."""
    names = ["torch", "triton", "numba", "numba-cuda", "numpy", "ipywidgets", "nbval"]
    out = {"python": platform.python_version(), "labkit": _version("labkit") or "working tree"}
    out.update({n: _version(n) for n in names})
    return out


def device_info() -> dict:
    """GPU name, compute capability, SM count, memory and L2; ``{"device": "cpu (sim)"}`` in sim mode."""
    if runtime.is_sim():
        return {"device": "cpu (sim)", "cc": None}
    import torch

    p = torch.cuda.get_device_properties(0)
    return {"device": p.name, "cc": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
            "memory_gb": round(p.total_memory / 1e9, 1), "l2_mb": round(getattr(p, "L2_cache_size", 0) / 1e6, 1)}


def run_meta(roofline_gbps: float | None = None) -> dict:
    """What a results file says about the run: device, date (UTC), versions, mode, roofline."""
    return {**device_info(), "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "mode": runtime.MODE, "versions": versions(), "roofline_gbps": roofline_gbps}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def save_records(records: list[Record], name: str, meta: dict, directory: str | os.PathLike | None = None) -> Path:
    """Write ``records`` with ``meta`` to ``<directory>/<name>_<device-slug>.json``; return the path."""
    directory = Path(directory or RESULTS_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}_{slug(meta.get('device', 'unknown'))}.json"
    payload = {"meta": meta, "records": [asdict(r) for r in records]}
    path.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n")
    return path


def load_results(pattern: str = "*.json", directory: str | os.PathLike | None = None) -> list[dict]:
    """Load results files matching ``pattern``; each is ``{"meta", "records", "path"}``."""
    directory = Path(directory or RESULTS_DIR)
    out = []
    for p in sorted(glob.glob(str(directory / pattern))):
        data = json.loads(Path(p).read_text())
        data["records"] = [Record(**r) for r in data["records"]]
        data["path"] = p
        out.append(data)
    return out


def label(meta: dict) -> str:
    """'NVIDIA H100 80GB HBM3, 2026-11-22': how plots label recorded results."""
    return f"{meta.get('device', '?')}, {str(meta.get('date', '?'))[:10]}"
