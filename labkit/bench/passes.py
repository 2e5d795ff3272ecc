"""Where the naive three-pass attention spends its time: each pass timed alone, and its launches.

:func:`bench_naive_passes` times the scores, softmax and output passes of
:mod:`labkit.attention.naive` separately (CUDA events, inputs rotated past the L2), and the
three together, and returns one Record per pass with its bytes (the bytes model of
:func:`~labkit.attention.naive.pass_bytes`), time, effective GB/s and % of the copy roofline.
:func:`kernel_launches` lists what one call launches. In sim mode nothing is timed.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from labkit import runtime
from labkit.attention.naive import PASSES, naive_decode, naive_passes, pass_bytes
from labkit.attention.reference import decode_bytes, reference_decode
from labkit.bench.attention import TOLERANCE, make_decode_inputs
from labkit.bench.records import Record
from labkit.bench.timing import gbps, rotating, rotation_count, time_for_record
from labkit.checks.core import rel_error

# Ops that only relabel memory (views) launch nothing.
_NO_KERNEL_OPS = {"aten._unsafe_view.default", "aten.empty.memory_format", "aten.empty_strided.default",
                  "aten.empty_like.default"}


class _OpRecorder(TorchDispatchMode):
    """Records every ATen op that reaches a backend, the level at which kernels are launched."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and str(func) not in _NO_KERNEL_OPS:
            self.ops.append(str(func).rsplit(".", 1)[0])
        return func(*args, **(kwargs or {}))


def kernel_launches(fn) -> tuple[list[str], str]:
    """What one call of ``fn()`` launches, and where the list comes from.

    gpu mode: the names of the GPU kernels (and memory operations) the profiler saw, source
    ``"profiler"``. sim mode, or a GPU without CUPTI: the ATen ops that reach a backend, each
    at least one kernel launch on a GPU (views excluded), source ``"aten ops"``.
    """
    fn()  # first call: lazy initialisation (cuBLAS handles, caching allocator) is not the point
    if not runtime.is_sim():
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        torch.cuda.synchronize()
        try:
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
            names = [e.name for e in prof.events() if e.device_type == DeviceType.CUDA]
            if names:
                return names, "profiler"
        except Exception:  # noqa: BLE001 - no CUPTI here: count the ops instead
            pass
    with _OpRecorder() as rec:
        fn()
    return rec.ops, "aten ops"


def bench_naive_passes(*, B: int, Hq: int, Hkv: int, T: int, D: int, dtype: torch.dtype,
                       roofline_gbps: float | None, warmup: int = 25, rep: int = 100) -> list[Record]:
    """Check :func:`naive_decode` against the float64 reference, then time each pass alone and all three.

    Returns four Records, kernels ``"scores"``, ``"softmax"``, ``"output"`` and ``"naive"``
    (the whole). A pass's bytes are what it moves (``extra["share_of_bytes"]``: its share of
    the three passes' total); the whole's bytes are the fewest decode needs, as for every
    decode kernel, with ``extra["bytes_moved"]`` the three passes' total and ``rel_error``. Times are
    ``None`` in sim mode. ``AssertionError`` if the result is off by more than the tolerance.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_pass = pass_bytes(B, Hq, Hkv, T, D, itemsize)
    total = sum(per_pass.values())
    sets = [make_decode_inputs(B, Hq, Hkv, T, D, dtype) for _ in range(rotation_count(total))]
    err = rel_error(naive_decode(*sets[0]), reference_decode(*sets[0]))
    if not err <= TOLERANCE[dtype]:
        raise AssertionError(f"naive at B={B} Hq={Hq} Hkv={Hkv} T={T} D={D} {dtype}: relative error {err:.3g}")
    shape = {"B": B, "Hq": Hq, "Hkv": Hkv, "T": T, "D": D}
    dname = str(dtype).replace("torch.", "")
    # Every set's passes, with their own intermediates: pass i of set j reads what pass i-1 of set j wrote.
    passes = [naive_passes(*s) for s in sets]
    records = []
    for i, name in enumerate(PASSES):
        fn = passes[0][i].fn
        ms, timing = time_for_record(rotating(fn, [p[i].args for p in passes]), warmup=warmup, rep=rep)
        records.append(_record(name, shape, dname, per_pass[name], ms, roofline_gbps,
                               {"pass": name, "share_of_bytes": per_pass[name] / total, **timing}))
    # The whole is reported like every decode kernel: effective GB/s over the fewest bytes decode needs.
    ms, timing = time_for_record(rotating(naive_decode, sets), warmup=warmup, rep=rep)
    records.append(_record("naive", shape, dname, decode_bytes(B, Hq, Hkv, T, D, itemsize), ms, roofline_gbps,
                           {"pass": "all", "bytes_moved": total, "rel_error": err, **timing}))
    del sets, passes
    return records


def _record(kernel, shape, dtype, nbytes, ms, roofline_gbps, extra) -> Record:
    bw = gbps(nbytes, ms)
    pct = None if bw is None or not roofline_gbps else 100.0 * bw / roofline_gbps
    return Record(kernel, dict(shape), dtype, nbytes, ms, bw, pct, extra)


__all__ = ["bench_naive_passes", "kernel_launches"]
