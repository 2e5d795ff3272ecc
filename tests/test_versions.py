"""Supported versions: the tested range, doctor's advice, machines without Triton, the Colab setup cell."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
import torch

from labkit import support
from labkit.course import colab
from labkit.course.release import release

ROOT = Path(__file__).resolve().parents[1]

# Run in a subprocess: neither Triton nor numba-cuda is importable there, as on macOS (where
# Numba's own CUDA simulator runs the Numba kernels).
NO_TRITON = '''
import importlib.abc, sys
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "NumbaCudaFinder"]  # numba-cuda's redirect
class _NotOnMacOS(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("triton", "numba_cuda"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _NotOnMacOS())
'''


# --- Triton's interpreter ------------------------------------------------------------------------
def test_interpreter_runs_masks_built_from_scalar_conditions():
    # Triton 3.9's interpreter refused these ("mask has unsupported dtype"); the RoPE write and
    # the paged kernel build their masks this way.
    from labkit.testing.doctor_kernels import scalar_mask_kernel

    x = torch.randn(37)
    for row, want in ((1, 3 * x), (5, torch.full_like(x, -1.0))):  # inside, then outside [0, num_rows)
        out = torch.full_like(x, -1.0)
        scalar_mask_kernel[(1,)](x, out, 37, row, 2, BLOCK=64)
        assert torch.equal(out, want)


def test_every_kernel_family_doctor_runs_matches_the_reference():
    from labkit.testing.doctor_kernels import FAMILIES

    for name, _, fn, _ in FAMILIES:
        assert fn(seed=3) < 1e-4, name


# --- the tested range ------------------------------------------------------------------------------
def _requirement(spec: str) -> tuple[str, str]:
    m = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*(.*)$", spec.split(";")[0].strip())
    return m.group(1).lower(), m.group(2).strip()


def test_pyproject_lower_bounds_are_the_oldest_tested_and_there_are_no_upper_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = dict(_requirement(d) for d in project["dependencies"])
    for name, oldest in support.lower_bounds().items():
        assert deps[name] == f">={oldest}", (name, deps[name])
    for name in support.COLAB_KEEPS:
        assert "<" not in deps[name] and "==" not in deps[name]
    assert project["requires-python"] == f">={support.TESTED[0].oldest}"
    assert project["license"] == "MIT"  # the SPDX string, not the deprecated table
    triton = next(d for d in project["dependencies"] if d.startswith("triton"))
    assert "platform_system == 'Linux'" in triton


def test_ci_floor_pins_colab_versions_and_readme_table_lists_the_range():
    pins = {}
    for line in (ROOT / ".ci" / "colab-floor.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Supported versions")[1].split("\n## ")[0]
    for t in support.TESTED:
        row = next(ln for ln in table.splitlines() if ln.startswith(f"| {t.name} |"))
        assert t.oldest in row and t.newest in row, row
        if t.name not in ("python", "torch"):  # CI's notes on these two: support.NOTES
            assert support.parse(pins[t.name])[:2] == support.parse(t.oldest)[:2], t.name


@pytest.mark.parametrize("installed,state", [("2.13.0+cpu", "ok"), ("2.11.0", "ok"), ("2.10.1", "older"),
                                             ("2.14.0", "newer"), ("2.13.9", "ok"), (None, "missing")])
def test_status_compares_release_series(installed, state):
    assert support.status(support.Tested("torch", "2.11", "2.13"), installed) == state


def test_doctor_says_what_to_do_outside_the_tested_range(monkeypatch, capsys):
    from labkit import doctor

    fake = {"triton": "3.10.0", "numpy": "1.26.4"}
    real = doctor._installed
    monkeypatch.setattr(doctor, "_installed", lambda name: fake.get(name) or real(name))
    report = doctor.Report()
    doctor.check_versions(report, system="Linux")
    out = capsys.readouterr().out
    assert report.ok  # outside the range is a warning, not a failure
    assert "triton 3.10.0 is newer than the versions the course is tested on (3.6 to 3.9.x)" in out
    assert "pip install 'triton>=3.6,<3.10'" in out
    assert "numpy 1.26.4 is older" in out and "pip install -U 'numpy>=2.1'" in out


# --- machines without Triton (macOS, Windows) -------------------------------------------------------
def test_without_triton_labkit_imports_and_doctor_explains_where_triton_notebooks_run():
    code = NO_TRITON + '''
import labkit, labkit.attention, labkit.decoding, labkit.serving, labkit.checks.nb06, labkit.testing.doctor_kernels
import numba.cuda
print("numba.cuda:", numba.cuda.implementation)
from labkit.decoding.fast import engine_class
try:
    engine_class("triton")(None, 1)
except RuntimeError as exc:
    print("triton engine:", exc)
import platform
platform.system = lambda: "Darwin"  # after torch's import, which reads it
from labkit.doctor import doctor
sys.exit(0 if doctor().ok else 1)
'''
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LABKIT_MODE": "sim"}, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "triton is not installed: it installs on Linux only (Darwin here)" in proc.stdout
    assert "run the Triton notebooks on Colab" in proc.stdout
    assert "Triton split-K decode (notebook 03): skipped, no Triton here" in proc.stdout
    assert "Numba fused decode (notebook 02) ran and its result is right" in proc.stdout
    assert "engine='triton' needs Triton" in proc.stdout
    assert "numba.cuda: Built-in" in proc.stdout  # Numba's own simulator, not numba-cuda's


# --- the Colab setup cell and links --------------------------------------------------------------------
def test_only_colab_py_names_the_course_repository():
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], capture_output=True, text=True, cwd=ROOT).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    naming = [p for p in tracked if not p.endswith(".ipynb") and (ROOT / p).is_file()
              and colab.COURSE_REPO.split("://")[1] in (ROOT / p).read_text(errors="replace")]
    assert naming == ["labkit/course/colab.py"]


def test_setup_cell_installs_labkit_without_touching_colabs_packages():
    src = colab.setup_cell_source()
    assert src.startswith(colab.SETUP_MARK) and src.count(colab.COURSE_REPO) == 1
    commands = colab.install_commands("/content/course")
    assert commands[-1] == "pip install -q --no-deps -e /content/course"
    assert not any(pkg in c for c in commands for pkg in (" torch", "triton", "ipywidgets"))
    assert "Could not download the course" in src  # a failed clone says what to do, not git's error
    compile(src.replace("    !", "    pass  # "), "setup", "exec")


def test_release_rewrites_only_the_setup_cell_and_link_and_check_catches_drift(tmp_path):
    src, dst = tmp_path / "solutions", tmp_path / "notebooks"
    src.mkdir()
    shutil.copy(ROOT / "solutions" / "00_setup.ipynb", src)
    nb = nbformat.read(src / "00_setup.ipynb", as_version=4)
    nb.cells[1].source = "# Setup. On Colab: an old cell\nCOURSE_REPO = 'https://example.org/old'"
    nb.cells[0].source = nb.cells[0].source.replace(colab.link_line("00_setup.ipynb"), "[![Open In Colab](old)](x)")
    nbformat.write(nb, src / "00_setup.ipynb")
    release(src, dst)
    assert release(src, dst, check=True).stale == []
    after = nbformat.read(src / "00_setup.ipynb", as_version=4)
    original = nbformat.read(ROOT / "solutions" / "00_setup.ipynb", as_version=4)
    assert after.cells == original.cells  # back to the generated cell and link; nothing else touched
    student = nbformat.read(dst / "00_setup.ipynb", as_version=4)
    assert student.cells[1].source == colab.setup_cell_source()
    assert colab.link_line("00_setup.ipynb") in student.cells[0].source.splitlines()
    assert "https://colab.research.google.com/github/" in colab.link_line("00_setup.ipynb")


# --- labkit bench's small print -------------------------------------------------------------------------
def test_seed_table_explains_its_t4_columns_and_keeps_two_digits_below_a_tenth():
    from labkit.bench.attention import ratio, seed_table
    from labkit.bench.records import Record

    assert (ratio(0.034), ratio(0.0312), ratio(0.1), ratio(6.54)) == ("0.034", "0.031", "0.1", "6.5")
    timed = [Record(k, {"B": 1, "Hq": 12, "Hkv": 12, "T": 4096, "D": 64}, "float32", 1, ms, extra={"shape": "gpt2"})
             for k, ms in (("naive", 1.0), ("numba", 0.5), ("triton_splitk", 0.25), ("sdpa", 30.0))]
    table = seed_table(timed)
    assert "0.033×" in table and "T4 seed ×: the speedups over naive" in table


def test_a_recorded_roofline_says_it_is_recorded_and_on_which_gpu():
    from labkit.bench.report import roofline_or_recorded

    roof, line = roofline_or_recorded("naive_passes_*.json")
    assert roof and line.startswith(f"copy roofline: {roof:.0f} GB/s (recorded on NVIDIA ")
    assert "sim mode measures nothing" in line


def test_on_colab_a_failed_clone_says_what_to_do(monkeypatch, tmp_path):
    # The setup cell as IPython runs it, with Colab faked and a course address that can't be cloned.
    import types

    from IPython.core.inputtransformer2 import TransformerManager

    if os.path.isdir(colab.COURSE_DIR):
        pytest.skip(f"{colab.COURSE_DIR} exists here")
    code = TransformerManager().transform_cell(colab.setup_cell_source(repo=str(tmp_path / "no-such-repo")))
    ran = []
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    with pytest.raises(SystemExit) as exc:
        exec(code, {"get_ipython": lambda: types.SimpleNamespace(system=ran.append)})
    assert "Could not download the course from" in str(exc.value) and "ask your instructor" in str(exc.value)
    assert ran == []  # nothing installed after a failed clone
