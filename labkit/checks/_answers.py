"""Reject an answer that is labkit's own implementation of the exercise.

Each check module ends with ``SOLUTIONS = {"NN.exercise": ("labkit.module:object", ...)}``.
A check calls :func:`reject_labkit` first: an answer that *is* one of those objects (or the same
Triton kernel, or a function with the same code) fails with a clear message, so a notebook
cannot pass by importing the answer.
"""

from __future__ import annotations

import importlib

from labkit.checks.core import CheckFailure


def _resolve(path: str):
    module, _, name = path.partition(":")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _core(obj):
    """The Python function under a Triton kernel, a functools.partial, a bound method, or obj itself."""
    for attr in ("fn", "func", "__func__"):
        inner = getattr(obj, attr, None)
        if inner is not None and inner is not obj:
            return _core(inner)
    return obj


def is_labkit_answer(answer, paths) -> str | None:
    """The path of the labkit object that ``answer`` is, or None."""
    core = _core(answer)
    code = getattr(core, "__code__", None)
    for path in paths:
        try:
            ref = _resolve(path)
        except (ImportError, AttributeError):
            continue
        ref_core = _core(ref)
        if answer is ref or core is ref_core or (code is not None and code is getattr(ref_core, "__code__", None)):
            return path
    return None


def reject_labkit(answer, exercise: str, solutions: dict) -> None:
    """Raise :class:`CheckFailure` when ``answer`` is labkit's implementation of ``exercise``."""
    path = is_labkit_answer(answer, solutions.get(exercise, ()))
    if path is not None:
        print(f"Checking {exercise}")
        raise CheckFailure(f"{exercise}: the answer is labkit's own implementation ({path}), not yours: "
                           f"write the exercise's code in the notebook cell")


__all__ = ["is_labkit_answer", "reject_labkit"]
