"""Telling a student's answer from labkit's own (private to notebooks 00-03's checks).

A check gets the student's function; it must fail when that function *is* one of labkit's
implementations of the exercise, or only calls one (``reference_decode(...).to(q.dtype)``
passes every numerical property of 01.naive_decode). Two tests, both cheap:

* identity: the answer is, or wraps (``functools.wraps``), a labkit object named in the
  check module's ``SOLUTIONS`` or defined in a ``labkit`` module;
* calls: the answer runs once with a profile hook that fails when any function named in
  ``SOLUTIONS`` (or labkit's float64 reference) is entered. The hook sees calls through any
  name the student bound (``from labkit.attention import reference_decode as r``), because it
  compares code objects, not names. It watches the calling thread only: Numba's simulator
  threads and Triton's interpreter are not slowed down.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Iterable


def _resolve(spec: str):
    module, _, attr = spec.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _code(obj):
    obj = getattr(obj, "fn", obj)  # a triton.JITFunction keeps the Python function in .fn
    obj = getattr(obj, "py_func", obj)  # a numba dispatcher keeps it in .py_func
    return getattr(obj, "__code__", None)


def _unwrap(obj):
    seen = set()
    while obj is not None and id(obj) not in seen:
        seen.add(id(obj))
        yield obj
        obj = getattr(obj, "__wrapped__", None) or getattr(obj, "func", None)  # wraps, partial


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


def assert_not_labkit(answer, specs: Iterable[str]) -> None:
    """Fail when ``answer`` is (or wraps) a labkit object, or one named in ``specs``."""
    codes = forbidden(specs)
    for obj in _unwrap(answer):
        module = getattr(getattr(obj, "fn", obj), "__module__", "") or ""
        if _code(obj) in codes or module == "labkit" or module.startswith("labkit."):
            name = codes.get(_code(obj)) or f"{module}.{getattr(obj, '__name__', type(obj).__name__)}"
            raise AssertionError(f"your answer is labkit's own {name}: write it yourself "
                                 "(labkit's implementations are for later notebooks and comparisons)")


def run_guarded(fn: Callable, specs: Iterable[str], *args, **kwargs):
    """Call ``fn(*args, **kwargs)``; fail if it enters any labkit function named in ``specs``."""
    codes = forbidden(specs)
    hit: list[str] = []

    def hook(frame, event, arg):
        if event == "call" and frame.f_code in codes and not hit:
            hit.append(codes[frame.f_code])

    old = sys.getprofile()
    sys.setprofile(hook)
    try:
        result = fn(*args, **kwargs)
    finally:
        sys.setprofile(old)
    if hit:
        raise AssertionError(f"your answer calls labkit's {hit[0]}, which already computes the answer "
                             "(converting or reshaping its output is not an answer): write it yourself")
    return result


__all__ = ["assert_not_labkit", "forbidden", "run_guarded"]
