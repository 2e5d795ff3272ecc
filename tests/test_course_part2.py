"""Notebooks 04-07: checks reject labkit's own answers, stubs fail "not started", demos fall back visibly.

A grading-style test: every exercise of 04-07 answered with labkit's implementation (the objects
each check module's SOLUTIONS names) must fail its check; the released stubs must fail with
"not started"; ``use_student`` must pick the student's code only when it runs.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import labkit  # noqa: F401, I001  (first: it picks the mode)
import pytest

from labkit.checks._guard import _resolve
from labkit.checks._guard import labkit_origin as is_labkit_answer
from labkit.checks.core import CheckFailure
from labkit.course.fallback import use_student

ROOT = Path(__file__).resolve().parents[1]

CHECKS = {  # exercise -> (module, check function)
    "04.rope": ("nb04", "check_rope"), "04.rope_kernel": ("nb04", "check_rope_kernel"),
    "04.write_kv_rope": ("nb04", "check_write_kv_rope"),
    "05.allocator": ("nb05", "check_allocator"), "05.slot_lookup": ("nb05", "check_slot_lookup"),
    "05.paged_kernel": ("nb05", "check_paged_kernel"),
    "06.accept": ("nb06", "check_accept"), "06.round": ("nb06", "check_round"),
    "06.sample_kernel": ("nb06", "check_sample_kernel"),
    "07.static_schedule": ("nb07", "check_static_schedule"), "07.admit": ("nb07", "check_admit"),
    "07.schedule_running": ("nb07", "check_schedule_running"),
}


def _check(exercise):
    module, fn = CHECKS[exercise]
    mod = importlib.import_module(f"labkit.checks.{module}")
    return mod, getattr(mod, fn)


def test_every_exercise_has_solutions_that_resolve():
    for exercise in CHECKS:
        mod, _ = _check(exercise)
        paths = mod.SOLUTIONS[exercise]
        assert paths, exercise
        for path in paths:
            _resolve(path)  # raises if a path is stale


@pytest.mark.parametrize("exercise", sorted(CHECKS))
def test_labkit_answer_scores_zero(exercise):
    mod, check = _check(exercise)
    for path in mod.SOLUTIONS[exercise]:
        with pytest.raises(CheckFailure, match="labkit's own implementation"):
            check(_resolve(path))


def test_a_copy_of_labkit_code_is_flagged_but_a_different_function_is_not():
    from labkit.serving.scheduler import admit

    def mine(waiting, *, budget, free_slots, blocks, watermark=0):
        return []

    assert is_labkit_answer(admit, ("labkit.serving.scheduler:admit",))
    assert is_labkit_answer(mine, ("labkit.serving.scheduler:admit",)) is None


def _stub_namespace(notebook: str, exercise: str) -> dict:
    """Run the released notebook's import cell and the exercise's stub cell; return the namespace."""
    nb = json.loads((ROOT / "notebooks" / notebook).read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    ns: dict = {}
    imports = next(c for c in cells if "import labkit" in "".join(c["source"]))
    exec("".join(imports["source"]), ns)  # noqa: S102 - our own released notebook
    stub = next(c for c in cells if c.get("metadata", {}).get("labkit", {}).get("exercise") == exercise)
    exec("".join(stub["source"]), ns)  # noqa: S102
    return ns


@pytest.mark.parametrize("notebook, exercise, name", [
    ("04_rope_fusion.ipynb", "04.write_kv_rope", "write_kv_rope_kernel"),
    ("06_speculative_decoding.ipynb", "06.sample_kernel", "top_p_kernel"),
    ("06_speculative_decoding.ipynb", "06.accept", "accept_draft_tokens"),
    ("07_continuous_batching.ipynb", "07.admit", "admit"),
])
def test_released_stub_fails_not_started(notebook, exercise, name, capsys):
    ns = _stub_namespace(notebook, exercise)
    _, check = _check(exercise)
    with pytest.raises(CheckFailure, match="not started"):
        check(ns[name])


def test_use_student_falls_back_visibly(capsys):
    def unfinished(x):
        raise NotImplementedError("Exercise 07.admit: your code here")

    def wrong(x):
        return x + 1

    def right(x):
        return x

    def probe(f):
        assert f(2) == 2, "f(2) != 2"

    assert use_student(unfinished, right, "07.admit", probe=probe, what="admit") is right
    assert "your admit is not finished (NotImplementedError)" in capsys.readouterr().out
    assert use_student(wrong, right, "07.admit", probe=probe) is right
    assert "wrong result" in capsys.readouterr().out
    assert use_student(right, wrong, "07.admit", probe=probe, what="admit") is right
    assert "using your admit" in capsys.readouterr().out
    got = use_student(unfinished, "labkit.serving.scheduler:admit", "07.admit", probe=probe)
    from labkit.serving.scheduler import admit

    assert got is admit


def test_sweep_settings_span_idle_to_past_static_saturation():
    from labkit.serving.bench import SWEEP_FRACTIONS, requests_for_rate

    assert 6 <= len(SWEEP_FRACTIONS) <= 8
    assert min(SWEEP_FRACTIONS) <= 0.05 and max(SWEEP_FRACTIONS) >= 0.5  # static sustained ~0.22
    assert requests_for_rate(0.1) == 10 and requests_for_rate(30.0) == 120


def test_hints_for_every_exercise():
    from labkit.course.hints import hint_count

    for exercise in CHECKS:
        assert hint_count(exercise) >= 2, exercise
