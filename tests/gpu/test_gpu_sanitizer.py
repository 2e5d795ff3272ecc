"""compute-sanitizer on the Numba and Triton kernels (pytest -m gpu), as gpu_run.sh ran it.

The targets are :mod:`labkit.testing.sanitize_numba` (memcheck and racecheck),
:mod:`labkit.testing.sanitize_triton`, :mod:`labkit.testing.sanitize_quant` and
:mod:`labkit.testing.sanitize_rope_sampling` (memcheck): small, odd shapes, every case twice into
NaN-poisoned outputs against the float64 reference (exit 1 on a wrong answer; the sanitizer's
``--error-exitcode 3`` on a memory error or a race). Each runs first without the sanitizer
(in this process: the answers), then under it in a subprocess, skipped with the reason when
``compute-sanitizer`` is not on PATH. The Triton target compiles into its own cache, never one
a timing reuses (a sanitizer stage before a timing once slowed the timed kernels).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SANITIZER = shutil.which("compute-sanitizer")
RUNS = {  # id: (tool, module, extra sanitizer options)
    "numba-memcheck": ("memcheck", "labkit.testing.sanitize_numba", ["--report-api-errors", "no"]),
    "numba-racecheck": ("racecheck", "labkit.testing.sanitize_numba", []),
    "triton-memcheck": ("memcheck", "labkit.testing.sanitize_triton", ["--report-api-errors", "no"]),
    "quant-memcheck": ("memcheck", "labkit.testing.sanitize_quant", ["--report-api-errors", "no"]),
    "rope-sampling-memcheck": ("memcheck", "labkit.testing.sanitize_rope_sampling", ["--report-api-errors", "no"]),
}


@pytest.mark.parametrize("module", ["labkit.testing.sanitize_numba", "labkit.testing.sanitize_triton",
                                    "labkit.testing.sanitize_quant", "labkit.testing.sanitize_rope_sampling"])
def test_sanitizer_target_answers_are_right(module):
    import importlib

    assert importlib.import_module(module).main() == 0


@pytest.mark.skipif(SANITIZER is None, reason="compute-sanitizer is not on PATH (it ships with the CUDA toolkit)")
@pytest.mark.parametrize("run", sorted(RUNS))
def test_compute_sanitizer_finds_no_error(run, tmp_path):
    tool, module, options = RUNS[run]
    env = dict(os.environ, LABKIT_MODE="gpu", TRITON_CACHE_DIR=str(tmp_path / "triton-cache"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [SANITIZER, "--tool", tool, *options, "--error-exitcode", "3", sys.executable, "-m", module]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    report = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"{' '.join(cmd[1:4])} on {module}: exit {proc.returncode}\n{report}"
