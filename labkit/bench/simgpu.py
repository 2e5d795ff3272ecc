"""A simulated GPU for learning to time kernels: the mistakes of a real one, deterministic, anywhere.

A real GPU runs work asynchronously (a launch returns at once), compiles a kernel on its
first launch, and serves a buffer that fits in L2 from the cache on the next launch. The
three classic timing mistakes follow: reading the host clock without waiting for the device,
timing the first call (compilation), and re-running one small buffer (timing the L2, not
memory). :class:`SimulatedGPU` has all three behaviours with virtual clocks, so a timing
function can be checked exactly, with or without a real GPU.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class Event:
    """A device timestamp, set when the device reaches it in its queue."""

    time_us: float | None = None


class SimulatedGPU:
    """An asynchronous device with a host clock, a work queue, a compile cost and an LRU L2.

    ``launch_us``: host time a launch costs; ``compile_us``: device time of a kernel's first
    launch; ``dram_gbps``/``l2_gbps``: bandwidth from memory and from the cache;
    ``outlier_rate``: the share of launches that run 8x slower.
    """

    def __init__(self, *, l2_bytes: int = 4 << 20, dram_gbps: float = 320.0, l2_gbps: float = 1600.0,
                 launch_us: float = 4.0, compile_us: float = 40_000.0, jitter: float = 0.03,
                 outlier_rate: float = 0.0, seed: int | None = None):
        self.l2_bytes, self.dram_gbps, self.l2_gbps = l2_bytes, dram_gbps, l2_gbps
        self.launch_us, self.compile_us, self.jitter = launch_us, compile_us, jitter
        self.outlier_rate = outlier_rate  # share of launches slowed 8x (a clock drop, a neighbour)
        self._rng = random.Random(seed)
        self._host = 0.0  # host clock (µs)
        self._device_free = 0.0  # when the device finishes its queued work (µs)
        self._l2: OrderedDict[int, int] = OrderedDict()  # buffer id -> bytes, most recent last
        self._compiled: set[str] = set()
        self.launches = 0

    # --- what a timing function may call ---------------------------------------------------
    def now_us(self) -> float:
        """The host clock. It does not wait for the device."""
        return self._host

    def synchronize(self) -> None:
        """Block the host until every launched kernel has finished."""
        self._host = max(self._host, self._device_free)

    def record_event(self) -> Event:
        """Enqueue a timestamp (like ``torch.cuda.Event.record()``): it is set when the device gets there."""
        self._host += 0.5
        return Event(max(self._host, self._device_free))

    @staticmethod
    def elapsed_us(start: Event, end: Event) -> float:
        """Device time between two recorded events."""
        return end.time_us - start.time_us

    def kernel(self, name: str, nbytes: int) -> "SimKernel":
        """A memory-bound kernel that reads ``nbytes`` from the buffer it is launched on."""
        return SimKernel(self, name, nbytes)

    # --- the device model -----------------------------------------------------------------
    def true_time_us(self, nbytes: int, *, cached: bool = False) -> float:
        """The time a launch takes on the device, from memory (or L2 when ``cached``)."""
        return nbytes / ((self.l2_gbps if cached else self.dram_gbps) * 1e3)

    def _run(self, name: str, nbytes: int, buffer_id: int) -> None:
        self.launches += 1
        start = max(self._device_free, self._host)
        self._host += self.launch_us
        cached = buffer_id in self._l2 and nbytes <= self.l2_bytes
        work = self.true_time_us(nbytes, cached=cached) * (1 + self._rng.uniform(-self.jitter, self.jitter))
        if self._rng.random() < self.outlier_rate:
            work *= 8
        if name not in self._compiled:
            self._compiled.add(name)
            work += self.compile_us
        self._device_free = start + work
        self._touch(buffer_id, nbytes)

    def _touch(self, buffer_id: int, nbytes: int) -> None:
        self._l2.pop(buffer_id, None)
        self._l2[buffer_id] = nbytes
        while sum(self._l2.values()) > self.l2_bytes and len(self._l2) > 1:
            self._l2.popitem(last=False)


@dataclass
class SimKernel:
    gpu: SimulatedGPU
    name: str
    nbytes: int

    def __call__(self, buffer: int) -> None:
        """Launch on ``buffer`` (an integer id). Returns at once, as a real launch does."""
        self.gpu._run(self.name, self.nbytes, buffer)


def reference_time_us(gpu: SimulatedGPU, kernel: SimKernel, buffers: list[int], reps: int = 30) -> float:
    """How to time a kernel (the solution of notebook 00's exercise).

    Warm up once (compilation stays out), rotate over buffers that together exceed the L2,
    bracket each launch with device events, and report the median (robust to outliers).
    """
    kernel(buffers[0])
    gpu.synchronize()
    times = []
    for i in range(reps):
        start = gpu.record_event()
        kernel(buffers[(i + 1) % len(buffers)])
        end = gpu.record_event()
        gpu.synchronize()
        times.append(gpu.elapsed_us(start, end))
    times.sort()
    mid = len(times) // 2
    return times[mid] if len(times) % 2 else 0.5 * (times[mid - 1] + times[mid])
