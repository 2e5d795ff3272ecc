"""The classic timing mistakes, measured: no synchronisation, no warm-up, a working set in L2.

On a GPU each mistake is made on a real memory-bound kernel (a reduction over a KV-sized
buffer) and set beside the correct measurement; in sim mode the same mistakes are made on
:class:`~labkit.bench.simgpu.SimulatedGPU`, whose numbers are modelled, not measured.
"""

from __future__ import annotations

import time

import torch

from labkit import runtime
from labkit.bench.simgpu import SimulatedGPU, reference_time_us
from labkit.bench.timing import l2_bytes, rotating, time_ms


def _row(name: str, us: float, nbytes: int) -> dict:
    return {"timing": name, "us": us, "gbps": nbytes / (us * 1e-6) / 1e9}


def gpu_timing_mistakes(nbytes: int = 64 << 20) -> list[dict]:
    """Rows {timing, us, gbps} for one reduction over ``nbytes``, timed wrongly and rightly (GPU only)."""
    n_sets = max(2, 4 * l2_bytes() // nbytes + 1)
    bufs = [torch.randn(nbytes // 2, dtype=torch.float16, device="cuda") for _ in range(n_sets)]
    out = torch.empty((), dtype=torch.float32, device="cuda")
    fn = lambda x: torch.sum(x, dim=0, dtype=torch.float32, out=out)  # noqa: E731
    small = bufs[0][: l2_bytes() // 8]
    rows = []
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn(bufs[0])  # first call: allocator, kernel selection, caches cold
    torch.cuda.synchronize()
    rows.append(_row("first call (no warm-up)", (time.perf_counter() - t0) * 1e6, nbytes))
    t0 = time.perf_counter()
    for b in bufs:
        fn(b)
    rows.append(_row("host clock, no synchronize", (time.perf_counter() - t0) * 1e6 / len(bufs), nbytes))
    hot = time_ms(lambda: fn(small)) * 1e3
    rows.append(_row("small buffer, served from L2", hot, small.numel() * 2))
    rows.append(_row("correct: events, warm-up, rotated, median", time_ms(rotating(fn, [(b,) for b in bufs])) * 1e3,
                     nbytes))
    return rows


def simulated_timing_mistakes(seed: int = 0) -> list[dict]:
    """The same table on a simulated T4-like GPU (modelled numbers, deterministic)."""
    nbytes = 3 << 20
    rows = []
    gpu = SimulatedGPU(seed=seed)
    k = gpu.kernel("reduce", nbytes)
    t0 = gpu.now_us(); k(0); gpu.synchronize()  # noqa: E702
    rows.append(_row("first call (no warm-up)", gpu.now_us() - t0, nbytes))
    t0 = gpu.now_us()
    for i in range(20):
        k(i % 8)
    rows.append(_row("host clock, no synchronize", (gpu.now_us() - t0) / 20, nbytes))
    gpu.synchronize()
    rows.append(_row("small buffer, served from L2", reference_time_us(gpu, k, [0]), nbytes))
    rows.append(_row("correct: events, warm-up, rotated, median", reference_time_us(gpu, k, list(range(8))), nbytes))
    return rows


def timing_mistakes() -> tuple[list[dict], str]:
    """The table for this mode and where it comes from."""
    if runtime.is_sim():
        return simulated_timing_mistakes(), "simulated GPU (sim mode: modelled, not measured)"
    return gpu_timing_mistakes(), torch.cuda.get_device_name(0)
