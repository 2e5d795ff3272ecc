"""Timing done right: CUDA events through ``triton.testing.do_bench`` (median) after warm-up,
with inputs rotated so the working set is several times the L2, and the copy roofline
measured in the same process.

``LABKIT_TIMING=brief`` (the grader sets it for the notebooks it runs) cuts every measurement to
a few milliseconds: the benchmark cells still run and check their kernels, but their figures are
rough. Grading checks kernels; it does not time them.

In sim mode nothing here returns a time: the simulators run on the CPU and their timings
mean nothing, so callers get ``None`` and say that timings need a GPU.
"""

from __future__ import annotations

import itertools
import math
import os
from typing import Callable, Sequence

import torch

from labkit import runtime

ROTATE_FACTOR = 4  # working set >= 4x the L2, or we time the cache instead of memory


def l2_bytes() -> int:
    """The GPU's L2 size in bytes (4 MB on a T4, 50 MB on an H100); 0 in sim mode."""
    if runtime.is_sim():
        return 0
    return int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20))


def rotation_count(bytes_per_set: int, *, factor: int = ROTATE_FACTOR, max_sets: int = 64,
                   memory_fraction: float = 0.5) -> int:
    """How many input sets to rotate over so that together they exceed ``factor`` × L2.

    Capped by ``max_sets`` and by ``memory_fraction`` of free GPU memory; one set when a
    single set already exceeds the target.
    """
    if runtime.is_sim() or bytes_per_set <= 0:
        return 1
    want = math.ceil(factor * l2_bytes() / bytes_per_set)
    free, _ = torch.cuda.mem_get_info()
    fit = max(1, int(memory_fraction * free // bytes_per_set))
    return max(1, min(want, max_sets, fit))


def rotating(fn: Callable, input_sets: Sequence[tuple]) -> Callable[[], object]:
    """A zero-argument callable that calls ``fn(*inputs)`` on the next input set each time."""
    cycle = itertools.cycle(input_sets)
    return lambda: fn(*next(cycle))


def time_ms(fn: Callable[[], object], *, warmup: int = 25, rep: int = 100, graph: bool = False) -> float | None:
    """Median time of ``fn()`` in milliseconds, CUDA events via ``triton.testing``.

    ``graph=False``: ``do_bench``, each call launched from Python, so a call whose kernels
    finish faster than Python can launch them measures the host (launch overhead and
    argument checks), not the GPU. ``graph=True``: ``do_bench_cudagraph``, the calls captured
    once in a CUDA graph and replayed, as a decode engine runs its step (vLLM, gpt-fast): the
    GPU's time for the kernels, launch gaps between them included, Python's excluded. ``fn``
    must then be capturable (no host sync, no allocation outside torch's allocator); a
    rotating ``fn`` is captured over its input sets in turn, so the rotation still holds.
    ``warmup`` and ``rep`` are in milliseconds (do_bench's units). Returns ``None`` in sim mode.
    """
    if runtime.is_sim():
        return None
    from triton.testing import do_bench, do_bench_cudagraph

    if os.environ.get("LABKIT_TIMING") == "brief":
        warmup, rep = min(warmup, 2), min(rep, 5)

    if graph:
        fn()  # compile and allocate workspaces outside the capture
        torch.cuda.synchronize()
        return float(do_bench_cudagraph(fn, rep=rep, return_mode="median"))
    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def time_for_record(fn: Callable[[], object], *, warmup: int = 25, rep: int = 100) -> tuple[float | None, dict]:
    """``(ms, extra)`` for a :class:`~labkit.bench.records.Record`: :func:`time_ms` with and
    without a CUDA graph. ``ms`` is the graph time, or the eager one where ``fn`` cannot be
    captured (e.g. a host sync inside it); ``extra = {"eager_ms", "timing"}`` says which it is,
    why, and what Python's launches cost on top. ``(None, {})`` in sim mode."""
    if runtime.is_sim():
        return None, {}
    eager = time_ms(fn, warmup=warmup, rep=rep)
    try:
        return time_ms(fn, rep=rep, graph=True), {"eager_ms": eager, "timing": "graph"}
    except Exception as exc:  # noqa: BLE001 - capture is not possible: the eager time stands
        torch.cuda.synchronize()
        note = f"eager only ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"
        return eager, {"eager_ms": eager, "timing": note}


def copy_roofline_gbps(nbytes: int | None = None) -> float | None:
    """Achieved device-to-device copy bandwidth in GB/s, counting bytes read plus written.

    The buffers are at least 8× the L2 so the copy streams from memory. This is the ceiling
    every kernel's effective bandwidth is compared with. ``None`` in sim mode.
    """
    if runtime.is_sim():
        return None
    nbytes = max(nbytes or runtime.SIZES.copy_bytes, 8 * l2_bytes())
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    t = time_ms(lambda: dst.copy_(src))
    del src, dst
    return 2 * nbytes / (t * 1e-3) / 1e9


def gbps(nbytes: int, ms: float | None) -> float | None:
    """Effective bandwidth: bytes the kernel must move over its time."""
    return None if ms is None else nbytes / (ms * 1e-3) / 1e9


def timings_need_gpu_message() -> str:
    return ("sim mode: kernels ran on Numba's and Triton's CPU simulators for correctness only; "
            "timings need a GPU (recorded GPU results are shown instead)")
