"""The serving engine: requests in, tokens streamed out, one scheduled step at a time.

Each :meth:`Engine.step`:

1. asks the scheduler for a plan at the clock's current time (who runs how many tokens;
   who is admitted, who is preempted: :mod:`labkit.serving.scheduler`);
2. runs the plan's work through the model runner (one packed pass over the paged cache for
   the decodes and prefill chunks together: :mod:`labkit.serving.runner`);
3. picks a token for every request whose pending tokens are all computed (greedy ones on
   the device, in one go: the step's one host sync), reads the clock (after
   ``torch.cuda.synchronize()`` on a GPU), streams each token (``request.on_token`` and the
   events :meth:`step` returns), and finishes requests that are done, freeing their KV
   blocks at once so the next step can give them to someone else.

The same engine runs the static-batching baseline: pass a
:class:`~labkit.serving.static.StaticScheduler` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from labkit.serving.blocks import blocks_for
from labkit.serving.clock import default_clock
from labkit.serving.metrics import StepLog
from labkit.serving.request import Request, RequestError, SamplingParams, Status, validate_request
from labkit.serving.runner import Work
from labkit.serving.scheduler import Scheduler


@dataclass(frozen=True)
class TokenEvent:
    """A token streamed to a client: the ``index``-th output token of request ``request_id``."""

    request_id: object
    token: int
    index: int
    time: float
    finished: bool


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> int:
    """One token from logits [V]: argmax when greedy, else temperature / top-k / top-p
    (:func:`labkit.decoding.sampling.sample_logits`), drawn with the request's own CPU generator."""
    from labkit.decoding.sampling import sample_logits

    if params.greedy:
        return int(torch.argmax(logits))
    return int(sample_logits(logits.float().cpu(), params.temperature, params.top_k, params.top_p, generator))


class Engine:
    """Continuous batching over a model runner (:class:`~labkit.serving.runner.PagedRunner` or
    :class:`~labkit.serving.toy.ToyRunner`).

    max_batch: most requests running at once. token_budget: most tokens per step (decodes
    count one each; prefills are chunked to fit). watermark: KV blocks kept free when
    admitting. clock: :class:`~labkit.serving.clock.WallClock` on a GPU, a logical
    :class:`~labkit.serving.clock.StepClock` in sim mode (the default picks). scheduler:
    replaces the iteration-level scheduler (e.g. the static baseline); admit,
    schedule_running: replace its policies (notebook exercises).
    """

    def __init__(self, runner, *, max_batch: int = 8, token_budget: int = 64, watermark: int = 0, clock=None,
                 scheduler=None, admit=None, schedule_running=None):
        self.runner, self.blocks = runner, runner.blocks
        if scheduler is None:
            policies = {k: v for k, v in (("admit", admit), ("schedule_running", schedule_running)) if v}
            if watermark + blocks_for(token_budget, self.blocks.block_size) > self.blocks.num_blocks:
                raise ValueError(f"watermark ({watermark} blocks) plus one full step's blocks "
                                 f"({blocks_for(token_budget, self.blocks.block_size)}) exceed the pool "
                                 f"({self.blocks.num_blocks} blocks): nothing could ever be admitted")
            scheduler = Scheduler(self.blocks, max_batch=max_batch, token_budget=token_budget,
                                  watermark=watermark, **policies)
        self.scheduler, self.max_batch = scheduler, scheduler.max_batch
        self.clock = clock or default_clock()
        self.steps: list[StepLog] = []
        self.finished: list[Request] = []
        self._live: dict[object, Request] = {}
        self._generators: dict[object, torch.Generator] = {}

    # -- requests --------------------------------------------------------------------------

    def add_request(self, request: Request) -> Request:
        """Validate and queue ``request``; raise :class:`RequestError` (changing nothing) if it can't be served."""
        validate_request(request, max_context=self.runner.max_context, vocab_size=self.runner.vocab_size,
                         max_blocks=self.blocks.num_blocks, block_size=self.blocks.block_size)
        if request.request_id in self._live:
            raise RequestError(f"request_id {request.request_id!r} is already being served")
        if request.status is not Status.WAITING or request.output:
            raise RequestError(f"request {request.request_id!r} was served before; submit request.copy()")
        if request.sampling.seed is not None:
            self._generators[request.request_id] = torch.Generator().manual_seed(request.sampling.seed)
        self._live[request.request_id] = request
        self.scheduler.add(request)
        return request

    def abort(self, request_id) -> Request:
        """Cancel a queued or running request (a client went away): its blocks are freed at once."""
        try:
            request = self._live.pop(request_id)
        except KeyError:
            raise RequestError(f"request_id {request_id!r} is not being served") from None
        self.scheduler.abort(request)
        self._generators.pop(request_id, None)
        return request

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # -- one step --------------------------------------------------------------------------

    def step(self) -> list[TokenEvent]:
        """Run one iteration; return the tokens it produced (empty when there was no work)."""
        if not self.scheduler.has_work():
            return []
        now = self.clock.now()
        if not self.scheduler.running and not any(r.arrival_time <= now for r in self.scheduler.waiting):
            self.clock.skip_to(self.scheduler.next_arrival())  # idle until the next request arrives
            now = self.clock.now()
        plan = self.scheduler.schedule(now)
        if not plan:
            raise RuntimeError(f"the scheduler planned no work with {len(self.scheduler.running)} running and "
                               f"{len(self.scheduler.waiting)} waiting requests ({self.blocks.num_free} of "
                               f"{self.blocks.num_blocks} blocks free): the engine can't make progress")
        work = [Work(r, r.num_computed, r.token_slice(r.num_computed, r.num_computed + n),
                     r.num_computed + n == r.num_tokens) for r, n in plan.scheduled]
        logits = self.runner.forward(work)
        # Greedy rows are picked on the device in one go and come back in one transfer; the rows
        # of sampled requests (float32 from the runner) come in a second, together, never one
        # transfer per request.
        greedy = logits.argmax(dim=-1).tolist() if logits.shape[0] else []
        sampled = [i for i, w in enumerate(x for x in work if x.wants_logits) if not w.request.sampling.greedy]
        host = dict(zip(sampled, logits[sampled].cpu())) if sampled else {}
        end = self.clock.step_done()
        events, done = [], []
        row = 0
        for w in work:
            w.request.num_computed += len(w.tokens)
            if w.wants_logits:
                r = w.request
                token = greedy[row] if r.sampling.greedy else sample(host[row], r.sampling,
                                                                      self._generators.get(r.request_id))
                events.append(self._emit(r, token, end))
                row += 1
                if r.done_generating():
                    done.append(r)
        if row != logits.shape[0]:
            raise RuntimeError(f"the runner returned {logits.shape[0]} rows of logits for {row} requests")
        for request in done:
            self.scheduler.finish(request)
            request.finish_time = end
            self.finished.append(request)
            del self._live[request.request_id]
            self._generators.pop(request.request_id, None)
        self.steps.append(StepLog(
            start=now, end=end, running=len(plan.scheduled), decodes=sum(len(w.tokens) == 1 for w in work),
            prefill_tokens=sum(len(w.tokens) for w in work if len(w.tokens) > 1), admitted=len(plan.admitted),
            preempted=len(plan.preempted), finished=len(done), free_blocks=self.blocks.num_free,
            ids=tuple(w.request.request_id for w in work)))
        return events

    def _emit(self, request: Request, token: int, now: float) -> TokenEvent:
        request.output.append(token)
        if request.first_token_time is None:
            request.first_token_time = now
        finished = request.done_generating()
        if request.on_token is not None:
            request.on_token(request, token)
        return TokenEvent(request.request_id, token, len(request.output) - 1, now, finished)

    # -- driving ---------------------------------------------------------------------------

    def stream(self, requests: Iterable[Request] = ()) -> Iterator[TokenEvent]:
        """Queue ``requests`` (all validated first) and yield every token as it is produced, until drained."""
        requests = list(requests)
        for r in requests:
            validate_request(r, max_context=self.runner.max_context, vocab_size=self.runner.vocab_size,
                             max_blocks=self.blocks.num_blocks, block_size=self.blocks.block_size)
        for r in requests:
            self.add_request(r)
        while self.scheduler.has_work():
            yield from self.step()

    def run(self, requests: Iterable[Request] = ()) -> list[Request]:
        """Serve ``requests`` (and anything queued) until every one has finished; return them in finishing order."""
        start = len(self.finished)
        for _ in self.stream(requests):
            pass
        return self.finished[start:]
