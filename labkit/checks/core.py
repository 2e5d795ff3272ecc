"""A small framework for exercise checks.

A check tests *named properties* of a student's code on fresh random inputs. It prints one
pass line per property (the same text in gpu and sim mode, so nbval can compare it) and,
when anything fails, raises :class:`CheckFailure` (an ``AssertionError``) that says which
properties failed, with Yours vs Expected and where they differ. An exercise that is not
started raises ``NotImplementedError`` from its stub: that is a failure, never a skip.
"""

from __future__ import annotations

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


def fresh_seed() -> int:
    """A seed that differs on every call: checks must not pass by memorising one input."""
    return int.from_bytes(os.urandom(4), "little")


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach()
        if x.dtype.is_floating_point:
            x = x.double()
        return x.cpu().numpy()
    return np.asarray(x)


def rel_error(yours, expected) -> float:
    """‖yours − expected‖ / ‖expected‖ in float64 (NaN anywhere gives NaN)."""
    y, e = _as_numpy(yours).astype(np.float64), _as_numpy(expected).astype(np.float64)
    denom = np.linalg.norm(e)
    return float(np.linalg.norm(y - e) / (denom if denom > 0 else 1.0))


def _where(y: np.ndarray, e: np.ndarray, bad: np.ndarray) -> str:
    idx = np.argwhere(bad)
    first = tuple(int(i) for i in idx[0])
    worst = np.unravel_index(np.nanargmax(np.where(bad, np.abs(y - e), -np.inf)), y.shape)
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


def assert_close(yours, expected, *, rtol: float, atol: float = 0.0, what: str = "output") -> None:
    """Raise ``AssertionError`` unless ``yours`` matches ``expected``.

    Shapes must match exactly; no NaN or inf may appear (outputs are poisoned with NaN
    before a run, so an element never written shows up here); the norm-wise relative error
    must be at most ``rtol``. Elementwise differences above ``atol + rtol·|expected|·10``
    are reported to show *where* the answers part.
    """
    y, e = _as_numpy(yours), _as_numpy(expected)
    if y.shape != e.shape:
        raise AssertionError(f"{what}: shape {tuple(y.shape)} (yours) vs {tuple(e.shape)} (expected)")
    y64, e64 = y.astype(np.float64), e.astype(np.float64)
    nonfinite = ~np.isfinite(y64)
    if nonfinite.any():
        raise AssertionError(
            f"{what}: {int(nonfinite.sum())} of {y.size} elements are NaN or inf "
            f"(never written, or overflow)\n" + _where(y64, e64, nonfinite)
        )
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
    y, e = _as_numpy(yours), _as_numpy(expected)
    if y.shape != e.shape:
        raise AssertionError(f"{what}: shape {tuple(y.shape)} (yours) vs {tuple(e.shape)} (expected)")
    bad = y != e
    if bad.any():
        raise AssertionError(f"{what} differs\n" + _where(y.astype(np.float64), e.astype(np.float64), bad))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, NotImplementedError):
        return f"not started: {exc}" if str(exc) else "not started (NotImplementedError)"
    if isinstance(exc, AssertionError):
        return str(exc) or "assertion failed"
    tb = traceback.extract_tb(exc.__traceback__)[-1]
    return f"raised {type(exc).__name__}: {exc} (at {os.path.basename(tb.filename)}:{tb.lineno})"


def run_check(exercise: str, properties: Sequence[tuple[str, Callable[[], object]]]) -> None:
    """Run each named property; print a pass line each; raise :class:`CheckFailure` on any failure.

    ``properties`` is a sequence of ``(name, fn)``; ``fn`` raises ``AssertionError`` when the
    property does not hold. Once the exercise is found unstarted, the remaining properties
    are reported unstarted without running them.
    """
    failures: list[tuple[str, str]] = []
    print(f"Checking {exercise}")
    unstarted: BaseException | None = None
    for name, fn in properties:
        if unstarted is not None:
            failures.append((name, _reason(unstarted)))
            print(f"  {FAIL} {name}")
            continue
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - every error is a failed property
            if isinstance(exc, NotImplementedError):
                unstarted = exc
            failures.append((name, _reason(exc)))
            print(f"  {FAIL} {name}")
        else:
            print(f"  {PASS} {name}")
    if failures:
        body = "\n\n".join(f"[{name}]\n{why}" for name, why in failures)
        raise CheckFailure(f"{exercise}: {len(failures)} of {len(properties)} properties failed\n\n{body}")
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
