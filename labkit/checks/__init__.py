"""Exercise checks: the framework (:mod:`labkit.checks.core`) and one module per notebook.

Check cells in the notebooks call e.g. ``checks.nb00.check_roofline_time(fn)``; the
per-notebook modules are imported on first use so that ``import labkit.checks`` stays cheap.
"""

import importlib

from labkit.checks.core import (
    CheckFailure,
    assert_close,
    assert_equal,
    fresh_seed,
    poisoned,
    rel_error,
    run_check,
)

__all__ = ["CheckFailure", "assert_close", "assert_equal", "fresh_seed", "poisoned", "rel_error", "run_check"]


def __getattr__(name):
    if name.startswith("nb"):
        return importlib.import_module(f"labkit.checks.{name}")
    raise AttributeError(name)
