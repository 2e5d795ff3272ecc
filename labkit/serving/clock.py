"""The engine's clock: wall-clock seconds on a GPU, a logical clock of steps in sim mode.

Latency metrics (time to first token, time per output token) are differences of clock
readings, and request arrival times are in the same unit.

* :class:`WallClock` reads ``time.perf_counter`` after ``torch.cuda.synchronize()`` at every
  step boundary, so a step's time includes its kernels, not just their launches.
* :class:`StepClock` counts engine steps: one step, one unit. In sim mode kernels run on
  CPU simulators and their wall time means nothing, but the *schedule* (who waits how many
  steps) is the same as on a GPU: that is what sim-mode figures show, and they say so.

When the engine has nothing to run before the next arrival, both clocks jump to it
(:meth:`skip_to`): an idle server does no work, so there is nothing to measure, and
benchmarks don't sleep.
"""

from __future__ import annotations

import time

from labkit import runtime


class StepClock:
    """A logical clock: ``now()`` is the number of steps taken (plus idle jumps)."""

    unit = "steps"

    def __init__(self):
        self._now = 0.0

    def now(self) -> float:
        return self._now

    def step_done(self) -> float:
        """End of an engine step: advance one unit; return the new time."""
        self._now += 1.0
        return self._now

    def skip_to(self, t: float) -> None:
        """Idle until ``t`` (no work happens, so nothing is measured)."""
        self._now = max(self._now, float(t))


class WallClock:
    """Seconds since the clock was made, synchronising the GPU at every step boundary."""

    unit = "s"

    def __init__(self, sync: bool | None = None):
        self._sync = (not runtime.is_sim()) if sync is None else sync
        self._start = time.perf_counter()
        self._skipped = 0.0

    def _synchronize(self) -> None:
        if self._sync:
            import torch

            torch.cuda.synchronize()

    def now(self) -> float:
        return time.perf_counter() - self._start + self._skipped

    def step_done(self) -> float:
        self._synchronize()
        return self.now()

    def skip_to(self, t: float) -> None:
        gap = float(t) - self.now()
        if gap > 0:
            self._skipped += gap


def default_clock():
    """A :class:`WallClock` in gpu mode, a :class:`StepClock` in sim mode."""
    return StepClock() if runtime.is_sim() else WallClock()
