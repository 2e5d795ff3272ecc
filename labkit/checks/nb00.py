"""Checks for notebook 00: setup and the memory wall."""

from __future__ import annotations

import random

from labkit.bench.memory_wall import decode_kv_bytes, roofline_time_us
from labkit.bench.simgpu import SimulatedGPU
from labkit.checks._guard import assert_not_labkit, run_guarded
from labkit.checks.core import fresh_seed, run_check


def _own(exercise, fn):
    """The property every check here starts with: the answer is the student's, not labkit's."""
    def prop():
        assert_not_labkit(fn, SOLUTIONS[exercise])
    return ("your own code (not labkit's answer)", prop)


def check_roofline_time(student_fn) -> None:
    """``student_fn(batch, layers, kv_heads, head_dim, context, itemsize, gbps) -> µs``: the least
    time one decode step's K and V reads can take at ``gbps``."""
    rng = random.Random(fresh_seed())

    def case(**over):
        args = dict(batch=rng.randint(1, 16), layers=rng.randint(1, 48), kv_heads=rng.choice([1, 4, 8, 12, 32]),
                    head_dim=rng.choice([64, 80, 128]), context=rng.randint(1, 40_000), itemsize=rng.choice([2, 4]),
                    gbps=rng.uniform(200, 3500))
        args.update(over)
        want = roofline_time_us(decode_kv_bytes(**{k: v for k, v in args.items() if k != "gbps"}), args["gbps"])
        got = run_guarded(student_fn, SOLUTIONS["00.roofline_time"], **args)
        if not isinstance(got, (int, float)) or not abs(got - want) <= 1e-6 * want:
            raise AssertionError(f"for {args}: yours {got!r} µs vs expected {want!r} µs")

    run_check("00.roofline_time", [
        ("reads both K and V, every layer and KV head", lambda: case()),
        ("a one-token context", lambda: case(context=1)),
        ("fp32 caches are twice as many bytes as fp16", lambda: case(itemsize=4)),
        ("GQA: only the KV heads are read", lambda: case(kv_heads=8, layers=32, head_dim=128)),
        ("T4 datasheet bandwidth (320 GB/s)", lambda: case(gbps=320.0)),
        _own("00.roofline_time", student_fn),
    ])


def _timing_case(student_fn, *, compile_us=0.0, outlier_rate=0.0, buffers=8, tolerance=0.15) -> None:
    rng = random.Random(fresh_seed())
    gpu = SimulatedGPU(compile_us=compile_us, outlier_rate=outlier_rate, launch_us=rng.uniform(3, 6),
                       seed=rng.randrange(1 << 30))
    nbytes = rng.randint(5 << 19, 7 << 19)  # 2.5 to 3.5 MB: one buffer fits the 4 MB L2
    kernel = gpu.kernel("decode_attention", nbytes)
    true = gpu.true_time_us(nbytes)
    got = run_guarded(student_fn, SOLUTIONS["00.fix_timing"], gpu, kernel, list(range(buffers)))
    if not isinstance(got, (int, float)) or got != got:
        raise AssertionError(f"expected a time in µs (a float), got {got!r}")
    if not abs(got - true) <= tolerance * true:
        raise AssertionError(f"yours {got:.2f} µs vs the kernel's true time {true:.2f} µs "
                             f"(launch {gpu.launch_us:.1f} µs, L2 hit {gpu.true_time_us(nbytes, cached=True):.2f} µs)")


def check_timing(student_fn) -> None:
    """``student_fn(gpu, kernel, buffers) -> µs`` must measure a memory-bound kernel's true time."""
    run_check("00.fix_timing", [
        ("waits for the device before reading the clock", lambda: _timing_case(student_fn)),
        ("leaves the first call's compilation out (warm-up)", lambda: _timing_case(student_fn, compile_us=40_000.0)),
        ("rotates buffers so the L2 can't serve them", lambda: _timing_case(student_fn, buffers=6)),
        ("robust to outliers (median, not mean)", lambda: _timing_case(student_fn, outlier_rate=0.1)),
        ("all three at once", lambda: _timing_case(student_fn, compile_us=40_000.0, outlier_rate=0.1)),
        _own("00.fix_timing", student_fn),
    ])


# The labkit objects that implement each exercise of notebook 00 (an answer that is, wraps or
# calls one of them fails its check; the grader flags it).
SOLUTIONS = {
    "00.roofline_time": ("labkit.bench.memory_wall:decode_kv_bytes", "labkit.bench.memory_wall:roofline_time_us",
                         "labkit.bench.memory_wall:decode_step_bytes", "labkit.bench.memory_wall:memory_wall_table"),
    "00.fix_timing": ("labkit.bench.simgpu:reference_time_us", "labkit.bench.timing:time_ms"),
}
