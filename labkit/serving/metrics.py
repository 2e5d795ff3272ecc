"""Serving metrics: throughput, time to first token, time per output token, batch occupancy.

All times are readings of the engine's clock: seconds on a GPU (wall clock, synchronised
at step boundaries), steps on sim mode's logical clock. ``unit`` says which.

* **throughput**: output tokens per unit of time, from the first arrival to the last finish.
* **TTFT** (time to first token): first token's time minus the request's arrival time. It
  includes the time spent waiting in the queue: that is what a user waits.
* **TPOT** (time per output token): (last token's time − first token's time) / (tokens − 1),
  per request with at least two output tokens: how fast the text streams once it starts.
* **occupancy**: per step, the fraction of the ``max_batch`` slots doing work.
* **recomputed tokens**: tokens the model ran beyond each request's prompt and output (the last
  output token is never run): the work preemption by recomputation threw away.

p50 and p99 are over requests (numpy's linear-interpolation percentiles).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class StepLog:
    """What one engine step did."""

    start: float  # clock reading when the step was planned
    end: float  # clock reading after its work finished (tokens are stamped with this)
    running: int  # requests that ran tokens this step
    decodes: int  # of which ran one token
    prefill_tokens: int  # tokens run in prefill chunks (longer than one token)
    admitted: int  # requests admitted this step
    preempted: int  # requests preempted this step
    finished: int  # requests that finished this step
    free_blocks: int  # KV blocks free after the step
    ids: tuple = ()  # ids of the requests that ran tokens, in plan order


@dataclass(frozen=True)
class Metrics:
    """A summary of one served workload."""

    unit: str  # "s" (wall clock) or "steps" (logical clock)
    requests: int
    output_tokens: int
    duration: float  # first arrival to last finish
    throughput: float  # output tokens per unit
    ttft_p50: float
    ttft_p99: float
    tpot_p50: float
    tpot_p99: float
    occupancy: float  # mean fraction of batch slots busy over the steps
    steps: int
    preemptions: int
    recomputed_tokens: int = 0  # tokens run again after a preemption (work lost to recomputation)

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        u = "tok/s" if self.unit == "s" else "tok/step"
        t = (lambda x: f"{x * 1e3:.1f} ms") if self.unit == "s" else (lambda x: f"{x:.1f} steps")
        return (f"{self.requests} requests, {self.output_tokens} tokens in {self.steps} steps: "
                f"{self.throughput:.2f} {u}; TTFT p50 {t(self.ttft_p50)}, p99 {t(self.ttft_p99)}; "
                f"TPOT p50 {t(self.tpot_p50)}, p99 {t(self.tpot_p99)}; occupancy {self.occupancy:.0%}; "
                f"{self.preemptions} preemptions")


def percentile(values, q: float) -> float:
    """The q-th percentile (0-100) of ``values``; NaN when empty."""
    values = [v for v in values if v is not None]
    return float(np.percentile(values, q)) if values else float("nan")


def ttfts(requests) -> list[float]:
    return [r.first_token_time - r.arrival_time for r in requests if r.first_token_time is not None]


def tpots(requests) -> list[float]:
    return [(r.finish_time - r.first_token_time) / (len(r.output) - 1)
            for r in requests if r.finish_time is not None and len(r.output) > 1]


def occupancy(steps: list[StepLog], max_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(step end times, fraction of the ``max_batch`` slots that ran tokens) per step."""
    t = np.array([s.end for s in steps], dtype=float)
    busy = np.array([s.running for s in steps], dtype=float) / max_batch
    return t, busy


def summarize(requests, steps: list[StepLog], *, max_batch: int, unit: str) -> Metrics:
    """The :class:`Metrics` of ``requests`` (all finished) served in ``steps``."""
    requests = list(requests)
    if not requests or any(r.finish_time is None for r in requests):
        raise ValueError("summarize needs a non-empty list of finished requests")
    out = sum(len(r.output) for r in requests)
    duration = max(r.finish_time for r in requests) - min(r.arrival_time for r in requests)
    ft, ot = ttfts(requests), tpots(requests)
    _, busy = occupancy(steps, max_batch)
    return Metrics(unit=unit, requests=len(requests), output_tokens=out, duration=duration,
                   throughput=out / duration if duration > 0 else float("nan"),
                   ttft_p50=percentile(ft, 50), ttft_p99=percentile(ft, 99),
                   tpot_p50=percentile(ot, 50), tpot_p99=percentile(ot, 99),
                   occupancy=float(busy.mean()) if busy.size else 0.0, steps=len(steps),
                   preemptions=sum(r.num_preemptions for r in requests),
                   recomputed_tokens=max(0, sum(s.decodes + s.prefill_tokens for s in steps)
                                         - sum(len(r.prompt) + len(r.output) - 1 for r in requests)))
