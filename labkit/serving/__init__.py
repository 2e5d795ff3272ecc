"""Serving many requests at once: continuous batching over the paged KV cache.

* :mod:`.request`: :class:`Request` (prompt, max new tokens, sampling, arrival) and its validation;
* :mod:`.scheduler`: the iteration-level scheduler (token budget, chunked prefill, admission
  while blocks are free, preemption by recomputation);
* :mod:`.static`: the static-batching baseline;
* :mod:`.engine`: :class:`Engine`, which runs either over a model runner, streaming tokens;
* :mod:`.runner`: the model over the paged cache; :mod:`.toy`: a toy runner for tests;
* :mod:`.metrics`, :mod:`.clock`: throughput, TTFT, TPOT, occupancy; wall or logical time;
* :mod:`.workloads`, :mod:`.bench`, :mod:`.plots`: requests from the workload generator,
  the static-vs-continuous comparison over arrival rates, and its plots.
"""

from labkit.serving.blocks import BlockLedger, blocks_for
from labkit.serving.clock import StepClock, WallClock, default_clock
from labkit.serving.engine import Engine, TokenEvent, sample
from labkit.serving.metrics import Metrics, StepLog, summarize
from labkit.serving.request import GREEDY, Request, RequestError, SamplingParams, Status, validate_request
from labkit.serving.scheduler import Scheduler, StepPlan, admit, schedule_running
from labkit.serving.static import StaticScheduler, static_schedule
from labkit.serving.toy import ToyRunner

__all__ = ["BlockLedger", "Engine", "GREEDY", "Metrics", "Request", "RequestError", "SamplingParams", "Scheduler",
           "StaticScheduler", "Status", "StepClock", "StepLog", "StepPlan", "TokenEvent", "ToyRunner", "WallClock",
           "admit", "blocks_for", "default_clock", "sample", "schedule_running", "static_schedule", "summarize",
           "validate_request"]
