"""A small framework for exercise checks.

A check tests *named properties* of a student's code on fresh random inputs. It prints one
pass line per property (the same text in gpu and sim mode, so nbval can compare it) and,
when anything fails, raises :class:`CheckFailure` (an ``AssertionError``) that says which
properties failed, with Yours vs Expected and where they differ. An exercise that is not
started raises ``NotImplementedError`` from its stub: that is a failure, never a skip.
"""

from __future__ import annotations

import inspect
import os
import traceback
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

# Relative error against the float64 reference that a kernel's result may have, by the dtype it
# computes in: fp32 accumulates in fp32; fp16 and bf16 round inputs and outputs to 11 and 8 bits.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}

PASS, FAIL = "✓", "✗"


class CheckFailure(AssertionError):
    """One or more properties of an exercise failed."""

    def _render_traceback_(self) -> list[str]:
        # IPython prints these lines in place of the traceback: its frames would all be labkit's
        # (the check and run_check), and the message already names each failed property and why.
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


def fresh_seed() -> int:
    """A seed that differs on every call: checks must not pass by memorising one input."""
    return int.from_bytes(os.urandom(4), "little")


# A student's answer is untrusted code: it is read through torch's and NumPy's own functions, never
# its methods (a Tensor subclass can override ``detach``, ``__sub__`` or ``__torch_function__``; an
# object can answer False to ``!=``), and must come out as plain numbers.
_NUMBERS = (bool, int, float, complex)
_NUMPY_SCALARS = frozenset(t for t in np.sctypeDict.values() if issubclass(t, np.generic))
_KINDS = "biufc"  # bool, int, unsigned, float, complex


class _NotNumbers(AssertionError):
    pass


def _tensor(x) -> np.ndarray:
    if inspect.getattr_static(type(x), "__torch_dispatch__", None) is not \
            inspect.getattr_static(torch.Tensor, "__torch_dispatch__"):
        raise _NotNumbers(f"a {type(x).__name__}, a tensor subclass that intercepts torch's operations")
    with torch._C.DisableTorchFunction():  # no subclass's __torch_function__, no mode a cell pushed
        t = torch.Tensor.detach(x).as_subclass(torch.Tensor).cpu()
        if t.dtype.is_floating_point:
            t = t.double()
        return t.numpy()


def _plain(x, depth: int = 0):
    kind = type(x)
    if kind in _NUMBERS or kind in _NUMPY_SCALARS or kind is np.ndarray:
        return x
    if isinstance(x, torch.Tensor):
        return _tensor(x)
    if kind in (list, tuple) and depth < 8:
        return [_plain(v, depth + 1) for v in x]
    raise _NotNumbers(f"a {kind.__name__}")


def _as_numpy(x, what: str = "value", who: str = "yours") -> np.ndarray:
    """``x`` as a plain ``np.ndarray`` of numbers; ``AssertionError`` naming ``who`` and ``what`` if it is not."""
    try:
        y = np.array(_plain(x))
        if y.dtype.kind not in _KINDS:
            raise _NotNumbers(f"an array of {y.dtype} elements")
    except _NotNumbers as exc:
        raise AssertionError(f"{what}: {who} is {exc}, not numbers: expected a torch.Tensor, a NumPy array, "
                             "a number or a list of numbers") from None
    return y


def rel_error(yours, expected) -> float:
    """‖yours − expected‖ / ‖expected‖ in float64 (NaN anywhere gives NaN)."""
    y, e = _as_numpy(yours).astype(np.float64), _as_numpy(expected).astype(np.float64)
    denom = np.linalg.norm(e)
    return float(np.linalg.norm(y - e) / (denom if denom > 0 else 1.0))


def _where(y: np.ndarray, e: np.ndarray, bad: np.ndarray) -> str:
    """Where ``y`` and ``e`` part: the first and the largest difference (NaN and inf count as the largest)."""
    idx = np.argwhere(bad)
    if not len(idx):
        return ""
    first = tuple(int(i) for i in idx[0])
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(y - e)
    diff = np.where(np.isfinite(diff), diff, np.inf)
    worst = np.unravel_index(int(np.argmax(np.where(bad, diff, -1.0))), y.shape) if y.ndim else ()
    worst = tuple(int(i) for i in worst)
    lines = [
        f"{len(idx)} of {y.size} elements differ; first at index {first}: "
        f"yours {y[first].item():.6g} vs expected {e[first].item():.6g}",
        f"largest difference at index {worst}: yours {y[worst].item():.6g} vs expected {e[worst].item():.6g}",
    ]
    if y.ndim >= 1 and y.shape[0] > 1:
        rows = sorted({int(i[0]) for i in idx})
        lines.append(f"differing positions along dim 0: {rows[:12]}{' …' if len(rows) > 12 else ''}")
    return "\n".join(lines)


class NotStarted(NotImplementedError):
    """An output left exactly as it was poisoned: the code that should write it did nothing.

    On a GPU a stub kernel's ``raise NotImplementedError`` inside ``@cuda.jit`` (or a Triton
    kernel that is never written) does not raise: the kernel returns and its NaN-poisoned
    output stays NaN. :func:`run_check` reports this as "not started" when it is what the
    first property finds, the same as the ``NotImplementedError`` the simulator raises.
    """


def _percent(n: int, total: int) -> str:
    p = 100.0 * n / max(total, 1)
    return f"{p:.0f}%" if p in (0.0, 100.0) or p >= 1 else f"{p:.2g}%"


def assert_finite(yours, *, what: str = "output", expected=None) -> None:
    """Raise unless every element of ``yours`` is finite; say how much is NaN (never written) or inf.

    A result that is NaN everywhere raises :class:`NotStarted` (outputs are poisoned with NaN
    before a run, so nothing was written); some NaN or inf raises ``AssertionError`` with where.
    Never raises anything else (no NumPy warnings turned into errors, no all-NaN reductions).
    """
    y = _as_numpy(yours, what)
    if y.dtype.kind not in "fc":  # plain integers or booleans: nothing can be NaN
        return
    y64 = y.astype(np.float64) if y.dtype.kind == "f" else np.abs(y)
    nan, inf = np.isnan(y64), np.isinf(y64)
    if not (nan.any() or inf.any()):
        return
    n_nan, n_inf = int(nan.sum()), int(inf.sum())
    if n_nan == y.size:
        raise NotStarted(f"your kernel left 100% of the {what} unwritten (NaN): nothing was written "
                         "(a stub kernel's `raise` does not stop it on a GPU)")
    parts = []
    if n_nan:
        parts.append(f"your kernel left {_percent(n_nan, y.size)} of the {what} unwritten "
                     f"(NaN: {n_nan} of {y.size} elements)")
    if n_inf:
        parts.append(f"{_percent(n_inf, y.size)} of the {what} is inf ({n_inf} of {y.size} elements: an overflow)")
    msg = (f"{what}: {n_nan + n_inf} of {y.size} elements are NaN or inf (never written, or overflow): "
           + "; ".join(parts))
    if expected is not None:
        e64 = _as_numpy(expected, what, "expected").astype(np.float64)
        if e64.shape == y64.shape:
            msg += "\n" + _where(y64, e64, nan | inf)
    else:
        msg += f"\nfirst at index {tuple(int(i) for i in np.argwhere(nan | inf)[0])}"
    raise AssertionError(msg)


def assert_close(yours, expected, *, rtol: float, atol: float = 0.0, what: str = "output") -> None:
    """Raise ``AssertionError`` unless ``yours`` matches ``expected``.

    Shapes must match exactly; no NaN or inf may appear (outputs are poisoned with NaN
    before a run, so an element never written shows up here); the norm-wise relative error
    must be at most ``rtol``. Elementwise differences above ``atol + rtol·|expected|·10``
    are reported to show *where* the answers part.
    """
    y, e = _as_numpy(yours, what), _as_numpy(expected, what, "expected")
    if y.shape != e.shape:
        raise AssertionError(f"{what}: shape {tuple(y.shape)} (yours) vs {tuple(e.shape)} (expected)")
    y64, e64 = y.astype(np.float64), e.astype(np.float64)
    assert_finite(y64, what=what, expected=e64)
    with np.errstate(invalid="ignore", over="ignore"):
        err = rel_error(y64, e64)
    if not err <= rtol:
        scale = np.abs(e64).max() if e64.size else 1.0
        bad = np.abs(y64 - e64) > atol + rtol * max(scale, 1e-30)
        if not bad.any():
            bad = y64 != e64
        raise AssertionError(
            f"{what}: relative error {err:.3g} > tolerance {rtol:.3g}\n" + _where(y64, e64, bad)
        )


def assert_equal(yours, expected, *, what: str = "value") -> None:
    """Exact equality for integers, token ids, block tables and other discrete results."""
    y, e = _as_numpy(yours, what), _as_numpy(expected, what, "expected")
    if y.shape != e.shape:
        raise AssertionError(f"{what}: shape {tuple(y.shape)} (yours) vs {tuple(e.shape)} (expected)")
    if y.dtype.kind == "f" and e.dtype.kind == "f" and np.isfinite(e).all():
        assert_finite(y, what=what, expected=e)
    bad = y != e
    if bad.any():
        raise AssertionError(f"{what} differs\n" + _where(y.astype(np.float64), e.astype(np.float64), bad))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, NotImplementedError):
        return f"not started: {exc}" if str(exc) else "not started (NotImplementedError)"
    if isinstance(exc, AssertionError):
        return str(exc) or "assertion failed"
    tb = traceback.extract_tb(exc.__traceback__)
    at = f" (at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno})" if tb else ""
    return f"raised {type(exc).__name__}: {exc}{at}"


def run_check(exercise: str, properties: Sequence[tuple[str, Callable[[], object]]]) -> None:
    """Run each named property; print a pass line each; raise :class:`CheckFailure` on any failure.

    ``properties`` is a sequence of ``(name, fn)``; ``fn`` raises ``AssertionError`` when the
    property does not hold. Once the exercise is found unstarted (``NotImplementedError`` from a
    stub, or :class:`NotStarted`: an output left all NaN by the first property that ran), the
    remaining properties are not run, and the failure says "not started" once, not once per property.
    """
    failures: list[tuple[str, str]] = []
    print(f"Checking {exercise}")
    unstarted: BaseException | None = None
    skipped: list[str] = []
    passed = 0
    for name, fn in properties:
        if unstarted is not None:
            skipped.append(name)
            print(f"  {FAIL} {name}")
            continue
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - every error is a failed property
            if isinstance(exc, NotStarted) and (passed or failures):
                failures.append((name, str(exc)))  # written elsewhere: a bug in this case, not a stub
            elif isinstance(exc, NotImplementedError):
                unstarted = exc
                skipped.append(name)
            else:
                failures.append((name, _reason(exc)))
            print(f"  {FAIL} {name}")
        else:
            passed += 1
            print(f"  {PASS} {name}")
    if unstarted is not None and not failures and not passed:
        n = len(properties)
        raise CheckFailure(f"{exercise}: {_reason(unstarted)}\n"
                           f"({n} of {n} properties failed: none can pass until it is written: {', '.join(skipped)})")
    if failures or unstarted is not None:
        body = "\n\n".join(f"[{name}]\n{why}" for name, why in failures)
        if unstarted is not None:
            body += ("\n\n" if body else "") + f"[{', '.join(skipped)}]\n{_reason(unstarted)}"
        n = len(failures) + len(skipped)
        raise CheckFailure(f"{exercise}: {n} of {len(properties)} properties failed\n\n{body}")
    print(f"{exercise}: all {len(properties)} properties pass")


def properties(pairs: Iterable[tuple[str, Callable[[], object]]]) -> list[tuple[str, Callable[[], object]]]:
    """Materialise a generator of properties (lets checks build them in a loop)."""
    return list(pairs)


def poisoned(shape, dtype, device=None):
    """A tensor full of NaN (or -1 for integer dtypes): anything left unwritten shows up."""
    fill = float("nan") if dtype.is_floating_point else -1
    return torch.full(tuple(shape), fill, dtype=dtype, device=device)


def launch_kernel(fn, *args, **kwargs):
    """Call ``fn`` (a launcher of a student's Triton kernel); report a stub kernel as unstarted.

    A stub kernel raises NotImplementedError; Triton's interpreter wraps it and Triton's
    compiler rejects the ``raise``, so the name is looked for in the error as well.
    """
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - re-raised, translated when the kernel is a stub
        if isinstance(exc, NotImplementedError) or "NotImplementedError" in f"{exc!r} {exc.__cause__!r}":
            raise NotImplementedError("the kernel is not written yet (it still raises NotImplementedError)") from exc
        raise
