"""The master notebooks' exercise solutions as code: for tests, GPU scripts and sanitizers.

An exercise's solution lives in one code cell of its master notebook (``solutions/``), with
``{"labkit": {"exercise": "02.fused_kernel"}}`` metadata. These helpers pull that cell out
so the same code can be run on a GPU, under compute-sanitizer, or compiled for the T4 in a
test, without copying it into the package (where it would drift from the notebook).
"""

from __future__ import annotations

from pathlib import Path

import nbformat

from labkit.course.release import cell_meta
from labkit.paths import ROOT


def exercise_source(notebook: str, exercise: str, *, masters: str | Path = ROOT / "solutions") -> str:
    """The source of the cell holding ``exercise`` in master ``notebook`` (e.g. ``"02_numba_fused"``)."""
    path = Path(masters) / (notebook if notebook.endswith(".ipynb") else notebook + ".ipynb")
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell_meta(cell).get("exercise") == exercise:
            return cell.source
    raise KeyError(f"{path.name} has no cell with exercise {exercise!r}")


def load_exercise(notebook: str, exercise: str, *, preamble: str = "",
                  masters: str | Path = ROOT / "solutions") -> dict:
    """Execute ``preamble`` then the exercise cell's source; return the resulting namespace."""
    namespace: dict = {"__name__": f"labkit_exercise_{exercise.replace('.', '_')}"}
    exec(compile(preamble + "\n" + exercise_source(notebook, exercise, masters=masters),
                 f"<{notebook}:{exercise}>", "exec"), namespace)
    return namespace


def write_exercise_module(notebook: str, exercise: str, path: str | Path, *, preamble: str = "",
                          masters: str | Path = ROOT / "solutions") -> Path:
    """Write ``preamble`` + the exercise cell to the Python file ``path`` (an importable module)."""
    path = Path(path)
    path.write_text(preamble + "\n" + exercise_source(notebook, exercise, masters=masters) + "\n")
    return path


# What 02.fused_kernel's cell uses from notebook 02's earlier cells.
NB02_KERNEL_PREAMBLE = ("import math\nimport labkit\nfrom numba import cuda, float32\n"
                        "from labkit.attention.numba_exercises import launch_one_pass\n")


def load_fused_kernel(*, masters: str | Path = ROOT / "solutions"):
    """The master's solution to 02.fused_kernel: ``(fused_decode, TILE)``, ready to run (tests, GPU scripts).

    Course-side only: the checks in ``labkit.checks`` never hand a solution to a notebook.
    """
    ns = load_exercise("02_numba_fused", "02.fused_kernel", preamble=NB02_KERNEL_PREAMBLE, masters=masters)
    return ns["fused_decode"], ns["TILE"]


__all__ = ["NB02_KERNEL_PREAMBLE", "exercise_source", "load_exercise", "load_fused_kernel", "write_exercise_module"]
