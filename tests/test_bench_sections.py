"""``labkit bench``'s sections: the registry, the headlines of the recorded results, a quick run
in sim mode (each section's correctness checks at small sizes, then the recorded GPU results)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from labkit.bench.sections import SECTIONS, load_section
from labkit.viz.plots import recorded

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(SECTIONS))
def test_every_section_has_the_interface(name):
    sec = load_section(name)
    for attr in ("TITLE", "NOTEBOOKS", "RESULTS", "run", "summary"):
        assert hasattr(sec, attr), f"section {name} lacks {attr}"


@pytest.mark.parametrize("name", list(SECTIONS))
def test_every_section_summarises_its_recorded_results(name):
    sec = load_section(name)
    records, meta = recorded(f"{sec.RESULTS}_*.json")
    assert meta is not None, f"no recorded results for section {name} in data/results"
    row = sec.summary(records)
    assert row and row["text"], f"section {name}: no headline from its recorded results"
    assert row["value"] is None or row["value"] > 0


def test_unknown_section_is_refused():
    proc = subprocess.run([sys.executable, "-m", "labkit", "bench", "--sections", "nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "unknown section" in proc.stdout


def test_quick_bench_in_sim_mode_checks_and_shows_recorded_results(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "labkit", "bench", "--sections", "paged,rope,speculative,serving",
                           "--quick", "--no-progress", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = proc.stdout.split("== summary")[1]
    for name in ("roofline", "paged", "rope", "speculative", "serving"):
        line = next(line for line in summary.splitlines() if f" {name} " in line)
        assert " ok " in line and "recorded on NVIDIA H200" in line, line
    assert "timings need a GPU" in proc.stdout
    assert list(tmp_path.glob("bench_summary_*.png"))
    assert not list(tmp_path.glob("*.json")), "sim mode must not write records"


def test_measured_or_recorded_falls_back_to_the_recorded_results():
    from labkit.bench.records import Record
    from labkit.bench.sections import measured_or_recorded

    shown, source = measured_or_recorded("paged", [Record("paged bs=16", {"T": 8}, "float32", 0)])
    assert shown and source.startswith("recorded on NVIDIA H200")
    timed = [Record("paged bs=16", {"T": 8}, "float32", 0, time_ms=1.0)]
    assert measured_or_recorded("paged", timed) == (timed, "this run")
