"""labkit: the package behind the course on GPU kernels for fast LLM decoding.

Importing labkit decides the run mode first (see :mod:`labkit.runtime`), so that Numba and
Triton, imported afterwards by labkit's kernels, already run on the GPU or in their CPU
simulators as chosen.
"""

from labkit import runtime  # noqa: F401  (must run before numba/triton are imported)
from labkit.runtime import IS_COLAB, MODE, SIZES, device, is_sim


def hint(exercise: str, n: int | str = 1) -> None:
    """Show hint ``n`` of ``exercise`` (e.g. ``labkit.hint("02.fused_kernel", 1)``); see labkit.course.hints."""
    from labkit.course.hints import hint as _hint

    _hint(exercise, n)


__version__ = "0.1.0"
__all__ = ["hint", "MODE", "SIZES", "IS_COLAB", "device", "is_sim", "runtime", "__version__"]
