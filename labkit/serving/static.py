"""The static-batching baseline: take up to N requests, run them until all finish, then the next N.

This is how a server without iteration-level scheduling batches: the batch is fixed when it
starts. Its prompts are prefilled together in one step, then every step decodes one token
for each request still generating. A request that finishes early leaves its slot **idle**
until the longest request of its batch is done, and requests that arrive meanwhile wait for
the whole batch, however short they are. With mixed output lengths most slot-steps are idle:
:func:`static_schedule` counts them.

Each request reserves KV memory for its longest possible sequence (prompt + max_new_tokens)
when its batch starts, as a server that preallocates must. It runs in the same
:class:`~labkit.serving.engine.Engine` with the same model runner as continuous batching, so
the comparison isolates the scheduling. (It is a generous baseline: finished rows are not
computed, whereas a padded static batch would keep computing them.)
"""

from __future__ import annotations

from labkit.kvcache.allocator import OutOfBlocks
from labkit.serving.scheduler import Scheduler, StepPlan
from labkit.serving.request import Status


def static_schedule(output_lengths: list, max_batch: int) -> tuple[int, float]:
    """Decode steps and idle fraction of slot-steps when static batching serves requests, in order,
    with these output lengths (all waiting from the start), ``max_batch`` at a time.

    Each batch takes as many steps as its longest output; a slot is idle in a step when its
    request has finished, or when the batch has fewer than ``max_batch`` requests.
    """
    steps = sum(max(output_lengths[i:i + max_batch]) for i in range(0, len(output_lengths), max_batch))
    busy = sum(output_lengths)
    return steps, 1.0 - busy / (steps * max_batch) if steps else 0.0


class StaticScheduler(Scheduler):
    """A :class:`~labkit.serving.scheduler.Scheduler` that forms a new batch only when the last one is done."""

    def __init__(self, blocks, *, max_batch: int):
        super().__init__(blocks, max_batch=max_batch, token_budget=1 << 30)

    def schedule(self, now: float) -> StepPlan:
        plan = StepPlan()
        if not self.running:  # the previous batch is done: start the next one
            for request in [r for r in self.waiting if r.arrival_time <= now][: self.max_batch]:
                try:  # reserve the longest the request can get; it never needs more
                    self.blocks.ensure(request, len(request.prompt) + request.max_new_tokens)
                except OutOfBlocks:
                    break
                self.waiting.remove(request)
                self.running.append(request)
                request.status, request.admitted_time = Status.RUNNING, now
                plan.admitted.append(request)
        plan.scheduled = [(r, r.num_pending) for r in self.running]
        return plan
