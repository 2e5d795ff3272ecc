"""Demos run the student's code where it works, and say so; otherwise labkit's, visibly.

    fused = use_student(my_step, labkit_step, "04.write_kv_rope", probe=lambda f: f(*tiny_inputs))

``probe(candidate)`` runs a candidate on a tiny input and raises if it is wrong (an
``AssertionError``), unfinished (``NotImplementedError``) or broken (anything else). The
student's function is used when its probe passes; labkit's otherwise, with the reason printed.
"""

from __future__ import annotations

from typing import Callable


def use_student(fn, labkit_fn, exercise: str, *, probe: Callable | None = None, what: str | None = None):
    """``fn`` if ``probe(fn)`` passes (or no probe is given), else ``labkit_fn``; prints which."""
    what = what or exercise
    try:
        if probe is not None:
            probe(fn)
    except NotImplementedError:
        print(f"your {what} is not finished (NotImplementedError) — using labkit's ({exercise})")
        return labkit_fn
    except AssertionError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "wrong result"
        print(f"your {what} gives a wrong result on a tiny input ({first}) — using labkit's ({exercise})")
        return labkit_fn
    except Exception as exc:  # noqa: BLE001 - any failure falls back, and says why
        print(f"your {what} failed on a tiny input ({type(exc).__name__}: {exc}) — using labkit's ({exercise})")
        return labkit_fn
    print(f"using your {what} ({exercise})")
    return fn


__all__ = ["use_student"]
