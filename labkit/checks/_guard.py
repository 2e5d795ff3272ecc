"""Telling a student's answer from labkit's own: the one place every check asks.

A check gets the student's function, kernel or class; it must fail when that answer *is* one of
labkit's implementations of the exercise, or only calls one (``reference_decode(...).to(q.dtype)``
passes every numerical property of 01.naive_decode). Three tests, all cheap:

* :func:`labkit_origin`: the answer is, or wraps (a partial, a bound method, ``functools.wraps``,
  a Numba dispatcher, a Triton kernel), an object named in the check module's ``SOLUTIONS`` or
  defined in a ``labkit`` module other than the checks;
* :func:`run_guarded`: the answer runs with a profile hook that fails when any function named in
  ``SOLUTIONS`` is entered. The hook sees calls through any name the student bound, because it
  compares code objects, not names. It watches the calling thread and the threads started
  during the call, and fails an answer that turns it off;
* an answer that delegates in a way neither sees is caught by ``labkit grade``, which reads the
  exercise cell (:mod:`labkit.course.reuse`).

Checks use :func:`assert_not_labkit` as a named property, or :func:`reject_labkit` before any
property runs.
"""

from __future__ import annotations

import importlib
import sys
import threading
from typing import Callable, Iterable

from labkit.checks.core import CheckFailure

_WRAPPERS = ("__wrapped__", "func", "__func__", "py_func", "fn")  # wraps, partial, method, Numba, Triton


def _resolve(spec: str):
    module, _, attr = spec.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _chain(obj):
    """``obj`` and every object it wraps, outermost first."""
    seen = set()
    while obj is not None and id(obj) not in seen:
        seen.add(id(obj))
        yield obj
        obj = next((inner for inner in (getattr(obj, a, None) for a in _WRAPPERS)
                    if inner is not None and inner is not obj), None)


def _code(obj):
    for inner in _chain(obj):
        code = getattr(inner, "__code__", None)
        if code is not None:
            return code
    return None


def forbidden(specs: Iterable[str]) -> dict:
    """``{code object: "module:name"}`` for the labkit objects named by ``specs``."""
    out = {}
    for spec in specs:
        try:
            code = _code(_resolve(spec))
        except (ImportError, AttributeError):
            continue
        if code is not None:
            out[code] = spec
    return out


def labkit_origin(answer, specs: Iterable[str] = ()) -> str | None:
    """The labkit object ``answer`` is (a ``SOLUTIONS`` spec, or ``module.name``), else ``None``."""
    codes = forbidden(specs)
    objects = {}
    for spec in specs:
        try:
            objects[id(_resolve(spec))] = spec
        except (ImportError, AttributeError):
            continue
    for obj in _chain(answer):
        if id(obj) in objects:
            return objects[id(obj)]
        code = getattr(obj, "__code__", None)
        if code is not None and code in codes:
            return codes[code]
        target = obj if isinstance(obj, type) or callable(obj) else type(obj)
        module = getattr(target, "__module__", "") or ""
        if isinstance(module, str) and (module == "labkit" or module.startswith("labkit.")) \
                and not module.startswith("labkit.checks"):
            return f"{module}.{getattr(target, '__qualname__', getattr(target, '__name__', type(target).__name__))}"
    return None


def assert_not_labkit(answer, specs: Iterable[str]) -> None:
    """A check's property: fail (``AssertionError``) when ``answer`` is (or wraps) labkit's own."""
    origin = labkit_origin(answer, specs)
    if origin is not None:
        raise AssertionError(f"your answer is labkit's own implementation ({origin}): write it yourself "
                             "(labkit's implementations are for later notebooks and comparisons)")


def reject_labkit(answer, exercise: str, solutions: dict | None = None) -> None:
    """Before a check's properties: raise :class:`CheckFailure` when ``answer`` is labkit's own."""
    origin = labkit_origin(answer, (solutions or {}).get(exercise, ()))
    if origin is not None:
        print(f"Checking {exercise}")
        raise CheckFailure(f"{exercise}: your answer is labkit's own implementation ({origin}), not your code: "
                           "write the exercise in the notebook cell; handing in labkit's earns no points")


# Calls that switch a call watch off, or install another in its place (a thread of the answer's own
# gets the watch through threading.setprofile; these would take it away again).
_UNWATCH = {getattr(sys, n): f"sys.{n}" for n in ("setprofile", "settrace") if hasattr(sys, n)}
_UNWATCH_CODE = {getattr(threading, n).__code__: f"threading.{n}" for n in ("setprofile", "settrace")}


def run_guarded(fn: Callable, specs: Iterable[str], *args, **kwargs):
    """Call ``fn(*args, **kwargs)``; fail if it enters any labkit function named in ``specs``.

    The hook watches the calling thread and every thread started during the call; an answer that
    turns it off (``sys.setprofile``/``settrace``, in any of those threads) or leaves another in its
    place fails as well: what it then called could not be seen.
    """
    codes = forbidden(specs)
    hit: list[str] = []
    unwatched: list[str] = []
    watching = [True]

    def hook(frame, event, arg):
        if not watching[0]:
            return
        if event == "call":
            if frame.f_code in codes and not hit:
                hit.append(codes[frame.f_code])
            elif frame.f_code in _UNWATCH_CODE:
                unwatched.append(_UNWATCH_CODE[frame.f_code])
        elif event == "c_call":
            try:
                name = _UNWATCH.get(arg)
            except TypeError:  # an unhashable callable: not one of sys's
                name = None
            if name:
                unwatched.append(name)

    old, old_threads = sys.getprofile(), threading.getprofile()
    threading.setprofile(hook)
    sys.setprofile(hook)
    try:
        result = fn(*args, **kwargs)
    finally:
        still = sys.getprofile() is hook
        watching[0] = False  # from here on the calls are ours (restoring the old hooks)
        sys.setprofile(old)
        threading.setprofile(old_threads)
    if hit:
        raise AssertionError(f"your answer calls labkit's {hit[0]}, which already computes the answer "
                             "(converting or reshaping its output is not an answer): write it yourself")
    if unwatched or not still:
        raise AssertionError(f"your answer turned off the check's watch on the functions it calls "
                             f"({unwatched[0] if unwatched else 'its profile hook was replaced'}): "
                             "a check cannot tell what such an answer computes; leave sys.setprofile alone")
    return result


__all__ = ["assert_not_labkit", "forbidden", "labkit_origin", "reject_labkit", "run_guarded"]
