"""Every exercise of every master: an answer that hands in labkit's own implementation scores 0.

For each exercise the student's cell is replaced by one that binds the exercise's name to the
first labkit object its check module's ``SOLUTIONS`` names; the grader's scan of the notebook it
would run (built from the master) must report ``reused-solution`` for that exercise and for no
other, and the master's own answer must scan clean. No notebook is executed: the scan decides
the status, and :func:`labkit.course.grade._finish` turns it into 0 points (end to end in
``test_grade.py``).
"""

from __future__ import annotations

import copy
import importlib

import nbformat
import pytest

from labkit.course import reuse
from labkit.course.grade import _scan
from labkit.course.graded import build_graded
from labkit.course.release import cell_meta, master_paths, student_notebook
from labkit.paths import ROOT

MASTERS = {p.stem: nbformat.read(p, as_version=4) for p in master_paths(ROOT / "solutions")}
CASES = [(name, cell_meta(c)["exercise"]) for name, nb in MASTERS.items() for c in nb.cells
         if c.cell_type == "code" and cell_meta(c).get("exercise")]


def _reusing_cell(source: str, spec: str) -> str:
    module, _, attr = spec.partition(":")
    names = sorted(reuse.exercise_names(source))
    assert names, "the master's exercise cell defines no name"
    return f"import {module} as _theirs\n{names[0]} = _theirs.{attr}\n"


@pytest.mark.parametrize("name, exercise", CASES, ids=[e for _, e in CASES])
def test_an_answer_that_is_labkits_own_is_flagged(name, exercise):
    master = MASTERS[name]
    solutions = importlib.import_module(f"labkit.checks.nb{name[:2]}").SOLUTIONS
    assert exercise in solutions, f"labkit.checks.nb{name[:2]}.SOLUTIONS has no entry for {exercise}"
    if not solutions[exercise]:
        pytest.skip(f"{exercise} is a warm-up with no labkit implementation")
    assert _scan(build_graded(copy.deepcopy(master), master, name), name)["reuse"] == {}, "the master is flagged"

    student = student_notebook(master, name)
    for cell in student.cells:
        if cell.cell_type == "code" and cell_meta(cell).get("exercise") == exercise:
            master_cell = next(c for c in master.cells if cell_meta(c).get("exercise") == exercise)
            cell.source = _reusing_cell(master_cell.source, solutions[exercise][0])
    found = _scan(build_graded(student, master, name), name)["reuse"]
    assert set(found) == {exercise}, f"expected {exercise} flagged as reused, got {sorted(found)}"
