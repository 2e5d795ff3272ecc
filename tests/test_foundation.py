"""The foundation: run modes, release, checks framework, records, doctor, compile-for-T4, viz."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

import labkit
from labkit.bench.records import Record, load_results, run_meta, save_records
from labkit.checks.core import CheckFailure, assert_close, poisoned, run_check
from labkit.course.release import ReleaseError, release, student_notebook

ROOT = Path(__file__).resolve().parents[1]


def run_py(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


# --- run modes ---------------------------------------------------------------------------------
def test_sim_mode_sets_simulator_switches():
    assert labkit.MODE == "sim"  # CI and this machine have no GPU
    assert os.environ["NUMBA_ENABLE_CUDASIM"] == "1" and os.environ["TRITON_INTERPRET"] == "1"
    from numba import cuda

    assert cuda.simulator_is_available if hasattr(cuda, "simulator_is_available") else True
    from numba import config

    assert config.ENABLE_CUDASIM


def test_triton_keeps_fma_contraction_without_a_warning():
    """Triton 3.9 warns at every first compile that 3.10 stops contracting a * b + c into an
    FMA by default; labkit keeps contraction on, the setting every recorded timing used."""
    assert os.environ["TRITON_DEFAULT_FP_FUSION"] == "1"
    code = ("import warnings, labkit, triton\n"
            "warnings.simplefilter('error')\n"
            "lang = getattr(triton.knobs, 'language', None)\n"
            "assert lang is None or lang.default_fp_fusion\n"
            "assert not hasattr(lang, 'fp_fusion_enabled') or lang.fp_fusion_enabled(None)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_DEFAULT_FP_FUSION"}  # unset, as on a fresh machine
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_unknown_mode_is_a_clear_error():
    proc = run_py("import labkit", LABKIT_MODE="fast")
    assert proc.returncode != 0
    assert "LABKIT_MODE='fast' is not a mode" in proc.stderr and "gpu, sim" in proc.stderr


def test_gpu_mode_without_gpu_is_a_clear_error():
    proc = run_py("import labkit", LABKIT_MODE="gpu")
    assert proc.returncode != 0 and "torch sees no CUDA device" in proc.stderr


def test_numba_imported_first_in_the_wrong_mode_is_a_clear_error():
    proc = run_py("import numba.cuda; import labkit", LABKIT_MODE="sim", NUMBA_ENABLE_CUDASIM="0")
    assert proc.returncode != 0 and "numba.cuda was imported before labkit" in proc.stderr


def test_sizes_profile_is_small_in_sim():
    assert max(labkit.SIZES.contexts) <= 256 and labkit.SIZES.heads * labkit.SIZES.head_dim <= 64


# --- release -------------------------------------------------------------------------------------
def _master(*sources, meta=None):
    nb = nbformat.v4.new_notebook()
    for i, src in enumerate(sources):
        cell = nbformat.v4.new_code_cell(src)
        if meta and i in meta:
            cell.metadata["labkit"] = meta[i]
        nb.cells.append(cell)
    return nb


def test_release_replaces_regions_with_named_stubs_and_strips_outputs():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\n"
    nb = _master(src, "print(1)", meta={0: {"exercise": "09.f"}})
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    nb.cells[1].execution_count = 3
    out = student_notebook(nb, "x.ipynb")
    assert out.cells[0].source == 'def f(x):\n    raise NotImplementedError("Exercise 09.f: your code here")'
    assert out.cells[1].outputs == [] and out.cells[1].execution_count is None
    assert out.cells[0].metadata["labkit"] == {"exercise": "09.f"}


@pytest.mark.parametrize("src, message", [
    ("### BEGIN SOLUTION\nx = 1\n", "line 1: ### BEGIN SOLUTION is never closed"),
    ("x = 1\n### END SOLUTION\n", "line 2: ### END SOLUTION without a matching"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "line 2: ### BEGIN SOLUTION inside the region"),
])
def test_malformed_regions_name_notebook_cell_and_line(tmp_path, src, message):
    nb = _master("print(0)", src, meta={1: {"exercise": "09.bad"}})
    (tmp_path / "src").mkdir()
    nbformat.write(nb, tmp_path / "src" / "09_bad.ipynb")
    with pytest.raises(ReleaseError) as err:
        release(tmp_path / "src", tmp_path / "dst")
    assert "09_bad.ipynb, cell 1" in str(err.value) and message in str(err.value)


def test_region_without_exercise_metadata_is_rejected():
    with pytest.raises(ReleaseError, match="no 'labkit.exercise' metadata"):
        student_notebook(_master("### BEGIN SOLUTION\nx=1\n### END SOLUTION"), "y.ipynb")


def test_release_check_detects_stale_and_orphan_notebooks(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    nbformat.write(_master("print(1)"), src / "01_a.ipynb")
    assert release(src, dst, check=True).stale == [dst / "01_a.ipynb"]
    release(src, dst)
    assert release(src, dst, check=True).stale == []
    nbformat.write(_master("print(2)"), src / "01_a.ipynb")
    assert release(src, dst, check=True).stale == [dst / "01_a.ipynb"]
    release(src, dst)
    (dst / "99_orphan.ipynb").write_text("{}")
    assert release(src, dst, check=True).stale == [dst / "99_orphan.ipynb"]


def test_repository_notebooks_are_in_step_with_solutions():
    proc = subprocess.run([sys.executable, "-m", "labkit", "release", "--check"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_release_check_runs_in_a_python_without_torch_numpy_or_nbformat():
    # a bare Python (the course's own release check runs before any dependency is installed):
    # sys.modules[name] = None makes `import name` raise ImportError, as on a machine without it
    code = ("import sys; sys.modules.update({m: None for m in ('torch', 'numpy', 'numba', 'triton', 'nbformat')}); "
            "from labkit.cli import main; sys.exit(main(['release', '--check']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "in step" in proc.stdout


def test_release_reads_and_writes_notebooks_byte_for_byte_as_nbformat_does(tmp_path):
    from labkit.course import ipynb

    paths = sorted((ROOT / "solutions").glob("*.ipynb")) + sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert len(paths) >= 16
    for path in paths:
        text = path.read_text(encoding="utf-8")
        ours, theirs = ipynb.reads(text, path.name), nbformat.reads(text, as_version=4)
        assert ours == theirs, path.name
        assert ipynb.writes(ours) == nbformat.writes(theirs), path.name
        if path.parent.name == "solutions":  # a release from nbformat's node writes the same student file
            assert ipynb.writes(student_notebook(ours, path.name)) == nbformat.writes(student_notebook(theirs, path.name))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "01_bad.ipynb").write_text("{not json")
    with pytest.raises(ReleaseError, match="01_bad.ipynb"):
        release(tmp_path / "src", tmp_path / "dst", check=True)


def test_every_exercise_has_a_check_and_student_notebooks_have_no_solutions():
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        exercises = [c.metadata["labkit"]["exercise"] for c in nb.cells if "exercise" in c.metadata.get("labkit", {})]
        checks = [c.metadata["labkit"]["check"] for c in nb.cells if "check" in c.metadata.get("labkit", {})]
        assert set(exercises) <= set(checks), f"{path.name}: exercises without a check cell"
        student = nbformat.read(ROOT / "notebooks" / path.name, as_version=4)
        assert all("BEGIN SOLUTION" not in c.source for c in student.cells)
        assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")


# --- checks framework -------------------------------------------------------------------------
def test_run_check_prints_pass_lines_and_raises_with_yours_vs_expected(capsys):
    def bad():
        assert_close(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.5, 3.0]), rtol=1e-6)

    with pytest.raises(CheckFailure) as err:
        run_check("99.demo", [("fine", lambda: None), ("wrong middle", bad)])
    out = capsys.readouterr().out
    assert "✓ fine" in out and "✗ wrong middle" in out
    text = str(err.value)
    assert "1 of 2 properties failed" in text and "index (1,)" in text and "yours 2 vs expected 2.5" in text


def test_unstarted_exercise_fails_every_property_never_skips():
    def stub():
        raise NotImplementedError("Exercise 99.x: your code here")

    with pytest.raises(CheckFailure) as err:
        run_check("99.x", [("a", stub), ("b", stub)])
    assert "2 of 2" in str(err.value) and "not started" in str(err.value)


def test_poisoned_outputs_reveal_unwritten_elements():
    out = poisoned((2, 3), torch.float32)
    out[0] = 1.0
    with pytest.raises(AssertionError, match="NaN or inf .*never written"):
        assert_close(out, torch.ones(2, 3), rtol=1e-3)


# --- records, bench, doctor -----------------------------------------------------------------
def test_records_round_trip_with_meta(tmp_path):
    rec = Record("k", {"B": 1, "T": 7}, "float16", 100, 0.5, 0.2, 10.0, {"rel_error": 1e-4})
    path = save_records([rec], "unit", run_meta(123.0), tmp_path)
    loaded = load_results("unit_*.json", tmp_path)
    assert loaded[0]["records"] == [rec] and loaded[0]["meta"]["roofline_gbps"] == 123.0
    meta = json.loads(path.read_text())["meta"]
    assert {"device", "date", "versions", "mode"} <= set(meta) and meta["versions"]["torch"]


def test_recorded_gpu_results_carry_device_date_and_versions():
    results = load_results("*.json")
    gpu = [r for r in results if r["meta"].get("mode") == "gpu"]
    for r in gpu:
        assert r["meta"]["device"] and r["meta"]["date"] and r["meta"]["versions"]["torch"]


def test_bench_in_sim_mode_says_timings_need_a_gpu(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "labkit", "bench", "--sections", "roofline", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "timings need a GPU" in proc.stdout and "labkit mode: sim" in proc.stdout


def test_doctor_runs_both_tiny_kernels_in_sim_mode():
    proc = subprocess.run([sys.executable, "-m", "labkit", "doctor"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tiny Numba kernel ran and its result is right" in proc.stdout
    assert "tiny Triton kernel ran and its result is right" in proc.stdout


# --- T4 compilation ----------------------------------------------------------------------------
def test_doctor_kernels_compile_for_the_t4():
    from labkit.testing.doctor_kernels import scale_kernel
    from labkit.testing import compile_numba_ptx_for_t4, compile_triton_for_t4

    build = compile_triton_for_t4(scale_kernel, {"x_ptr": "*fp16", "out_ptr": "*fp16", "n": "i32"}, {"BLOCK": 1024})
    assert build.shared_bytes <= 64 * 1024 and build.cubin_bytes > 0
    ptx = compile_numba_ptx_for_t4([("labkit.testing.doctor_kernels", "axpy", "void(float32[:], float32[:], float32[:], float32)")])
    assert all(".target sm_75" in p for p in ptx.values())


def test_t4_builds_mark_pointers_aligned_inside_tuple_arguments():
    # As a launch does: a pointer is 16-byte aligned wherever it sits, also as element j of a
    # tuple argument i (path (i, j)); scalars get no attribute. JSON's lists count as tuples.
    from labkit.testing.t4 import aligned_pointers

    names = ["x_ptr", "ptrs", "sizes", "n"]
    sig = {"x_ptr": "*fp32", "ptrs": ("*fp16", ("i32", "*i64")), "sizes": ["i32", "i32"], "n": "i32"}
    div16 = [["tt.divisibility", 16]]
    assert aligned_pointers(names, sig) == {(0,): div16, (1, 0): div16, (1, 1, 1): div16}


# --- viz ----------------------------------------------------------------------------------------
def test_plots_and_explorer_render_records():
    import matplotlib

    matplotlib.use("Agg")
    from labkit.viz import explorer, format_table, plot_bandwidth, plot_speedup

    recs = [Record(k, {"B": 1, "Hq": 4, "Hkv": 4, "T": t, "D": 64}, "float16", 1000 * t, ms, 1e3 * t / ms, 10.0)
            for k, f in (("naive", 3.0), ("fused", 1.0)) for t in (16, 32) for ms in [f * t / 16]]
    assert len(plot_bandwidth(recs, roofline_gbps=2000).axes) == 2
    assert plot_speedup(recs, baseline="naive").axes
    assert "3.00×" in format_table(recs, baselines=("naive",))
    box = explorer(recs, baselines=("naive",))
    assert len(box.children) == 3


# --- packaging ------------------------------------------------------------------------------------
def test_environment_yml_matches_pyproject():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    lines = (ROOT / "environment.yml").read_text().split("- pip:")[1].splitlines()
    listed = {ln.strip()[2:] for ln in lines if ln.strip().startswith("- ") and ln.strip() != "- -e ."}
    assert listed == wanted
    for pkg in ("torch", "triton", "ipywidgets"):
        spec = next(d for d in project["dependencies"] if d.split(">")[0].split(";")[0].strip() == pkg).split(";")[0]
        assert "<" not in spec and "==" not in spec, f"{pkg} must have no upper bound (Colab ships its own)"


def test_every_notebook_opens_with_the_same_colab_setup_that_never_reinstalls_colab_packages():
    sources = set()
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        first_code = next(c for c in nb.cells if c.cell_type == "code")
        assert first_code.source.startswith("# Setup. On Colab"), path.name
        sources.add(first_code.source)
    assert len(sources) == 1
    install_lines = [ln for ln in sources.pop().splitlines() if "pip install" in ln]
    assert install_lines and not any(pkg in ln for ln in install_lines for pkg in (" torch", "triton", "ipywidgets"))
