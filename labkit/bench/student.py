"""Time the student's own kernel beside labkit's and PyTorch's SDPA.

:func:`time_yours` is what notebooks 02 and 03 run after each kernel exercise: it checks the
student's kernel on a small problem first; if the exercise is not done (it still raises
``NotImplementedError``) or its answer is wrong, it says so and times labkit's kernel in its place,
labelled as such, so every later cell still runs. On a GPU it then times all three with CUDA
events over KV buffers rotated past the L2 (time, effective GB/s, % of the copy roofline
measured in the same run) and draws them. In sim mode it says that timings need a GPU and shows
the figures recorded on one: labkit's kernel and SDPA, and the course's master solution of the
exercise (``data/results/student_kernels_*.json``) where it has been recorded.
"""

from __future__ import annotations

from typing import Callable

import torch

from labkit import runtime
from labkit.attention import decode_bytes, get_impl, reference_decode
from labkit.bench.attention import make_decode_inputs
from labkit.bench.records import Record
from labkit.bench.timing import copy_roofline_gbps, gbps, rotating, rotation_count, time_for_record, timings_need_gpu_message
from labkit.checks.core import TOLERANCE, rel_error

STUDENT_PATTERN = "student_kernels_*.json"


def bench_callables(fns: dict[str, Callable], *, B: int, Hq: int, Hkv: int, T: int, D: int, dtype: torch.dtype,
                    roofline_gbps: float | None, check: bool = True, warmup: int = 25, rep: int = 100) -> list[Record]:
    """:func:`labkit.bench.attention.bench_decode` for arbitrary callables ``fn(q, k, v) -> out``
    (a student's kernel is no registered implementation): check against float64, then time."""
    nbytes = decode_bytes(B, Hq, Hkv, T, D, torch.empty((), dtype=dtype).element_size())
    sets = [make_decode_inputs(B, Hq, Hkv, T, D, dtype) for _ in range(rotation_count(nbytes))]
    expected = reference_decode(*sets[0]) if check else None
    shape = {"B": B, "Hq": Hq, "Hkv": Hkv, "T": T, "D": D}
    records = []
    for name, fn in fns.items():
        extra = {}
        if check:
            err = rel_error(fn(*sets[0]), expected)
            extra["rel_error"] = err
            if not err <= TOLERANCE[dtype]:
                raise AssertionError(f"{name} at {shape} {dtype}: relative error {err:.3g} > {TOLERANCE[dtype]}")
        ms, timing = time_for_record(rotating(fn, sets), warmup=warmup, rep=rep)
        extra.update(timing)
        bw = gbps(nbytes, ms)
        pct = None if bw is None or not roofline_gbps else 100.0 * bw / roofline_gbps
        records.append(Record(name, shape, str(dtype).replace("torch.", ""), nbytes, ms, bw, pct, extra))
    del sets
    return records


def probe(fn: Callable, *, Hq: int, Hkv: int, dtype: torch.dtype = torch.float32) -> str | None:
    """``None`` when ``fn(q, k, v)`` gives the right answer on a small problem, else why not."""
    s = runtime.SIZES
    q, k, v = make_decode_inputs(1, Hq, Hkv, s.check_lengths[-1], s.head_dim, dtype)
    try:
        out = fn(q, k, v)
        err = rel_error(out, reference_decode(q, k, v))
    except Exception as exc:  # noqa: BLE001 - any failure means: not usable, fall back
        text = f"{exc!r} {exc.__cause__!r}"
        if isinstance(exc, NotImplementedError) or "NotImplementedError" in text:
            return "not started (it still raises NotImplementedError)"
        return f"it raised {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    if not err <= TOLERANCE[dtype]:
        return f"its answer is wrong (relative error {err:.2g})"
    return None


def yours_or_labkits(fn: Callable, labkit_kernel: str, *, Hq: int = 4, Hkv: int = 2) -> tuple[Callable, str]:
    """``(fn, "yours")`` when ``fn`` works, else labkit's ``labkit_kernel`` and a label saying so (printed)."""
    why = probe(fn, Hq=Hq, Hkv=Hkv)
    if why is None:
        return fn, "yours"
    print(f"Your kernel is not usable yet: {why}.\n"
          f"Falling back to labkit's {labkit_kernel!r} in its place, labelled \"yours (labkit's)\".")
    impl = get_impl(labkit_kernel)
    return (lambda q, k, v: impl(q, k, v)), "yours (labkit's)"


def yours_or_fallback(fn: Callable, exercise: str, *probe_args, **probe_kwargs) -> tuple[Callable, str]:
    """``(fn, "yours")`` when ``fn(*probe_args, **probe_kwargs)`` runs; when it is not started
    (``NotImplementedError``) labkit's implementation of ``exercise`` (the first object named in
    the check module's ``SOLUTIONS``) and a label saying so (printed). For demo cells after an
    exercise: a student who has not finished it can still run every later cell."""
    import importlib

    try:
        fn(*probe_args, **probe_kwargs)
        return fn, "yours"
    except NotImplementedError:
        pass
    checks = importlib.import_module(f"labkit.checks.nb{exercise.split('.')[0]}")
    module, _, attr = checks.SOLUTIONS[exercise][0].partition(":")
    impl = getattr(importlib.import_module(module), attr)
    print(f"Your {exercise} is not done yet: using labkit's {module}.{attr} in its place.")
    return impl, "labkit's"


def _recorded(pattern: str, kernels, shape: dict, dtype: str) -> tuple[list[Record], dict | None]:
    from labkit.viz.plots import recorded, select

    records, meta = recorded(pattern)
    keep = [r for r in select(records, dtype=dtype, **shape) if r.kernel in kernels]
    return keep, meta


def print_records(records: list[Record]) -> None:
    print(f"{'kernel':<34}{'T':>7}{'µs':>10}{'GB/s':>9}{'% roof':>8}")
    for r in sorted(records, key=lambda r: (r.shape["T"], r.kernel)):
        us = "—" if r.time_ms is None else f"{1e3 * r.time_ms:.1f}"
        bw = "—" if r.gbps is None else f"{r.gbps:.0f}"
        pct = "—" if r.pct_roofline is None else f"{r.pct_roofline:.1f}"
        print(f"{r.kernel:<34}{r.shape['T']:>7}{us:>10}{bw:>9}{pct:>8}")


def time_yours(fn: Callable, *, exercise: str, labkit_kernel: str, Hq: int, Hkv: int, D: int,
               dtype: torch.dtype = torch.float16, contexts=(512, 2048, 8192, 32768), labkit_pattern: str,
               stretch: tuple[int, float], roofline_gbps: float | None = None, plot: bool = True):
    """Time the student's ``fn(q, k, v)`` beside labkit's ``labkit_kernel`` and SDPA at batch 1.

    ``stretch = (T, pct)``: the stated stretch target, ``pct`` % of the copy roofline at context
    ``T``. Returns ``(records, source)``; draws time and GB/s against context when ``plot``.
    """
    fn, label = yours_or_labkits(fn, labkit_kernel, Hq=Hq if runtime.MODE == "gpu" else 4, Hkv=Hkv if runtime.MODE == "gpu" else max(1, 4 * Hkv // Hq))
    shape = {"B": 1, "Hq": Hq, "Hkv": Hkv, "D": D}
    dname = str(dtype).replace("torch.", "")
    if runtime.is_sim():
        print(timings_need_gpu_message() + ".")
        if label == "yours":
            print("Your kernel ran on the simulator and its answer is right; its time needs a GPU.")
        records, meta = _recorded(labkit_pattern, (labkit_kernel, "sdpa"), shape, dname)
        mine, mine_meta = _recorded(STUDENT_PATTERN, (exercise,), shape, dname)
        for r in mine:
            r.kernel = f"{exercise} (master solution)"
        records += mine
        from labkit.bench.records import label as meta_label

        source = "recorded on " + meta_label(meta) if meta else "no recorded GPU results"
        if mine_meta:
            source += f"; the master solution of {exercise} recorded on {meta_label(mine_meta)}"
        roofline_gbps = roofline_gbps or (meta or {}).get("roofline_gbps")
    else:
        roofline_gbps = roofline_gbps or copy_roofline_gbps()
        records = []
        for T in contexts:
            records += bench_callables({label: fn, labkit_kernel: get_impl(labkit_kernel), "sdpa": get_impl("sdpa")},
                                       B=1, Hq=Hq, Hkv=Hkv, T=T, D=D, dtype=dtype, roofline_gbps=roofline_gbps)
        source = "this run"
    print(f"{exercise}: Hq={Hq} Hkv={Hkv} D={D} {dname}, batch 1 ({source}); copy roofline "
          + (f"{roofline_gbps:.0f} GB/s" if roofline_gbps else "unknown"))
    print_records(records)
    T_s, pct_s = stretch
    yours = [r for r in records if r.kernel in (label, f"{exercise} (master solution)") and r.shape["T"] == T_s]
    got = yours[0].pct_roofline if yours and yours[0].pct_roofline is not None else None
    print(f"stretch target: {pct_s:.0f}% of the copy roofline at T = {T_s}"
          + ("" if got is None else f"; {yours[0].kernel}: {got:.0f}% ({'reached' if got >= pct_s else 'not yet'})"))
    if plot and any(r.time_ms is not None for r in records):
        from labkit.viz.plots import plot_bandwidth

        plot_bandwidth(records, roofline_gbps=roofline_gbps, title=f"{exercise}: your kernel beside labkit's and SDPA",
                       source=source)
    return records, source


__all__ = ["STUDENT_PATTERN", "bench_callables", "print_records", "probe", "time_yours", "yours_or_fallback", "yours_or_labkits"]
