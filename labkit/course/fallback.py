"""Demos run the student's code where it works, and say so; otherwise labkit's, visibly.

    fused = use_student(my_step, labkit_step, "04.write_kv_rope", probe=lambda f: f(*tiny_inputs))

``labkit_fn`` may be a ``"module:object"`` path, imported only when it is needed (so a
notebook never imports its own exercise's answer). ``probe(candidate)`` runs a candidate on a tiny input and raises if it is wrong (an
``AssertionError``), unfinished (``NotImplementedError``) or broken (anything else). The
student's function is used when its probe passes; labkit's otherwise, with the reason printed.
"""

from __future__ import annotations

from typing import Callable


def _labkit(obj):
    if isinstance(obj, str):
        import importlib

        module, _, name = obj.partition(":")
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    return obj


def use_student(fn, labkit_fn, exercise: str, *, probe: Callable | None = None, what: str | None = None):
    """``fn`` if ``probe(fn)`` passes (or no probe is given), else labkit's; prints which."""
    what = what or exercise
    try:
        if probe is not None:
            probe(fn)
    except Exception as exc:  # noqa: BLE001 - any failure falls back, and says why
        # A stub kernel's NotImplementedError comes wrapped by Triton's interpreter or compiler.
        if isinstance(exc, NotImplementedError) or "NotImplementedError" in f"{exc!r} {exc.__cause__!r}":
            why = "is not finished (NotImplementedError)"
        elif isinstance(exc, AssertionError):
            why = f"gives a wrong result on a tiny input ({(str(exc).splitlines() or ['wrong result'])[0]})"
        else:
            why = f"failed on a tiny input ({type(exc).__name__}: {str(exc)[:120]})"
        print(f"your {what} {why} — using labkit's ({exercise})")
        return _labkit(labkit_fn)
    print(f"using your {what} ({exercise})")
    return fn


__all__ = ["use_student"]
