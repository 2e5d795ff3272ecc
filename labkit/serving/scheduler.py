"""The iteration-level scheduler: who runs how many tokens in the next engine step.

Static batching decides once per batch; this scheduler decides again at every step (Orca's
"iteration-level scheduling"), so a request that finishes frees its slot and its KV blocks
at once and a waiting request can take them on the very next step.

One step has a **token budget** (``token_budget``): decode requests cost one token each,
prefills cost their prompt, cut into chunks that fit what is left of the budget (chunked
prefill, as in Sarathi and vLLM). A long prompt therefore never stalls the decodes running
beside it, and every step does a bounded amount of work. Two policies fill the budget, in
this order:

1. :func:`schedule_running`: every running request, oldest first, gets its tokens (one for a
   decode, the next chunk for a prefill). When the KV pool can't hold them
   (:class:`~labkit.kvcache.allocator.OutOfBlocks`), the running request admitted *last* is
   preempted by recomputation: its blocks are freed and it goes back to the front of the
   waiting queue, to be re-prefilled later (prompt and generated tokens alike).
2. :func:`admit`: if nobody was preempted this step, waiting requests that have arrived are
   admitted first-come first-served while the budget, the batch slots (``max_batch``) and the
   free blocks allow, keeping ``watermark`` blocks free for the running requests to grow into.
   Admission stops at the first request that doesn't fit: a later, smaller request may not
   jump the queue (no starvation of long prompts).

The policies are plain functions so that notebook 07's exercises can replace them
(``Scheduler(..., admit=my_admit, schedule_running=my_schedule_running)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice, takewhile

from labkit.kvcache.allocator import OutOfBlocks
from labkit.serving.request import Request, Status


def schedule_running(running: list, *, budget: int, blocks) -> tuple[list, list]:
    """Give each running request its tokens for this step, preempting when blocks run out.

    running: requests in priority order (admitted earliest first). budget: tokens this step
    may run. blocks: a :class:`~labkit.serving.blocks.BlockLedger`. Returns ``(scheduled,
    preempted)``: ``scheduled`` a list of ``(request, num_tokens)`` with
    ``num_tokens = min(request.num_pending, budget left)``, in order; ``preempted`` the
    requests whose blocks were freed to make room (victims taken from the back of
    ``running``; a request that can't fit even then preempts itself).
    """
    scheduled, preempted = [], []
    queue = list(running)
    while queue and budget > 0:
        request = queue.pop(0)
        n = min(request.num_pending, budget)
        while True:
            try:
                blocks.ensure(request, request.num_computed + n)
                break
            except OutOfBlocks:
                victim = queue.pop() if queue else request  # the lowest priority: admitted last
                blocks.free(victim)
                preempted.append(victim)
                if victim is request:
                    break
        if preempted and preempted[-1] is request:
            break  # nothing lower to preempt: the request itself waits
        scheduled.append((request, n))
        budget -= n
    return scheduled, preempted


def admit(waiting: list, *, budget: int, free_slots: int, blocks, watermark: int = 0) -> list:
    """Admit waiting requests first-come first-served; return ``[(request, num_tokens)]``.

    waiting: the first ``free_slots`` requests that have arrived, in queue order (the
    :class:`Scheduler` shows an admission policy no more than it could admit, so a long queue
    costs nothing per step). budget: tokens left this step.
    free_slots: how many more requests may run (max_batch minus running). A request is
    admitted with ``num_tokens = min(request.num_pending, budget left)`` (its first prefill
    chunk) when a slot is free and allocating its chunk's blocks leaves at least
    ``watermark`` blocks free; its blocks are taken with ``blocks.ensure``. Stops at the
    first request that doesn't fit.
    """
    admitted = []
    for request in waiting:
        if budget <= 0 or free_slots <= 0:
            break
        n = min(request.num_pending, budget)
        if blocks.needed(request, request.num_computed + n) + watermark > blocks.num_free:
            break
        blocks.ensure(request, request.num_computed + n)
        admitted.append((request, n))
        budget -= n
        free_slots -= 1
    return admitted


@dataclass
class StepPlan:
    """What one engine step runs."""

    scheduled: list = field(default_factory=list)  # [(request, num_tokens)]: running ones first, then admitted
    preempted: list = field(default_factory=list)  # requests sent back to the waiting queue this step
    admitted: list = field(default_factory=list)  # requests that started running this step

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.scheduled)

    def __bool__(self) -> bool:
        return bool(self.scheduled)


class Scheduler:
    """Waiting and running queues over a block ledger; :meth:`schedule` plans one step.

    max_batch: most requests running at once. token_budget: most tokens run per step.
    watermark: blocks admission keeps free for the running requests.
    """

    def __init__(self, blocks, *, max_batch: int, token_budget: int, watermark: int = 0,
                 admit=admit, schedule_running=schedule_running):
        for name, value in (("max_batch", max_batch), ("token_budget", token_budget)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(watermark, int) or not 0 <= watermark < blocks.num_blocks:
            raise ValueError(f"watermark must be an int in [0, {blocks.num_blocks}), got {watermark!r}")
        self.blocks, self.max_batch, self.token_budget, self.watermark = blocks, max_batch, token_budget, watermark
        self._admit, self._schedule_running = admit, schedule_running
        self.waiting: list[Request] = []  # arrival order; preempted requests go back to the front
        self.running: list[Request] = []  # admission order (priority: earliest first)

    def add(self, request: Request) -> None:
        """Queue a request (kept in arrival order)."""
        i = len(self.waiting)
        while i > 0 and self.waiting[i - 1].arrival_time > request.arrival_time:
            i -= 1
        self.waiting.insert(i, request)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def next_arrival(self) -> float | None:
        return min((r.arrival_time for r in self.waiting), default=None)

    def schedule(self, now: float) -> StepPlan:
        """Plan the step that starts at time ``now`` (the clock's unit)."""
        scheduled, preempted = self._schedule_running(list(self.running), budget=self.token_budget,
                                                      blocks=self.blocks)
        self._check(scheduled, self.running, "schedule_running")
        if any(r in preempted for r, _ in scheduled) or any(r not in self.running for r in preempted):
            raise ValueError("schedule_running must preempt only running requests, and never one it schedules")
        for victim in preempted:  # the last preempted had the highest priority: it goes in front
            self.running.remove(victim)
            victim.status, victim.num_computed = Status.WAITING, 0
            victim.num_preemptions += 1
            self.waiting.insert(0, victim)
        plan = StepPlan(scheduled=list(scheduled), preempted=list(preempted))
        if not preempted:  # no room to grow the running requests: none to start new ones either
            # The arrived requests are a prefix of the queue (preempted ones go in front, the rest
            # keep arrival order). No policy can admit more than one per free slot, so it is shown
            # only that many (the admit contract): a queue of hundreds costs nothing per step.
            slots = self.max_batch - len(self.running)
            arrived = list(islice(takewhile(lambda r: r.arrival_time <= now, self.waiting), slots))
            budget = self.token_budget - plan.num_tokens
            admitted = self._admit(arrived, budget=budget, free_slots=slots,
                                   blocks=self.blocks, watermark=self.watermark)
            self._check(admitted, arrived, "admit")
            for request, _ in admitted:
                self.waiting.remove(request)
                self.running.append(request)
                request.status = Status.RUNNING
                if request.admitted_time is None:
                    request.admitted_time = now
            plan.scheduled += admitted
            plan.admitted = [r for r, _ in admitted]
        if plan.num_tokens > self.token_budget or len(self.running) > self.max_batch:
            raise RuntimeError(f"the step plan breaks the limits: {plan.num_tokens} tokens (budget "
                               f"{self.token_budget}), {len(self.running)} running (max_batch {self.max_batch})")
        return plan

    def finish(self, request: Request) -> None:
        """A request is done: free its blocks now and drop it from the running queue."""
        self.blocks.free(request)
        self.running.remove(request)
        request.status = Status.FINISHED

    def abort(self, request: Request) -> None:
        """Drop a request wherever it is, freeing its blocks."""
        self.blocks.free(request)
        for queue in (self.running, self.waiting):
            if request in queue:
                queue.remove(request)

    @staticmethod
    def _check(pairs, allowed, who: str) -> None:
        # A policy is user code (notebook exercises): catch a malformed plan here, with its name.
        if not isinstance(pairs, (list, tuple)):
            raise TypeError(f"{who} must return a list of (request, num_tokens) pairs, got {pairs!r}")
        allowed = {id(r) for r in allowed}
        for item in pairs:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise TypeError(f"{who} must return (request, num_tokens) pairs, got {item!r}")
            request, n = item
            if id(request) not in allowed:
                raise ValueError(f"{who} scheduled request {getattr(request, 'request_id', request)!r}, "
                                 f"which is not one of the requests it was given")
            if not isinstance(n, int) or not 1 <= n <= request.num_pending:
                raise ValueError(f"{who} gave request {request.request_id!r} {n!r} tokens; expected 1 to "
                                 f"{request.num_pending} (its pending tokens)")
        if len({id(r) for r, _ in pairs}) != len(pairs):
            raise ValueError(f"{who} scheduled a request twice in one step")
