"""A request to the serving engine: what the client asked for, and what happened to it.

The client's part is fixed when the request is made: the prompt's token ids, how many
tokens to generate, how to sample them, and when the request arrived. The engine fills in
the rest as it serves it: its state, the tokens generated so far, how many tokens of
``prompt + output`` already have keys and values in the KV cache (``num_computed``), and
the times of its first and last tokens (for the latency metrics).

One number drives scheduling: ``num_tokens - num_computed``, the tokens the model still
has to run for this request before it can sample again. A fresh request owes its whole
prompt (a prefill, possibly cut into chunks); a decoding request owes one token, the one it
sampled last; a request preempted by recomputation lost its cache, so it owes its prompt
*and* every token it generated before, and is re-prefilled from scratch. Greedy outputs
don't change: the recomputed keys and values are the same ones.
"""

from __future__ import annotations

import enum
import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence


class RequestError(ValueError):
    """A request the engine can never serve (empty prompt, too long, no tokens to generate...).

    It is raised by :func:`validate_request` when the request is submitted, before the engine
    touches it, so the requests already running are not disturbed.
    """


class Status(enum.Enum):
    WAITING = "waiting"  # queued: not yet admitted, or preempted and queued again
    RUNNING = "running"  # admitted: holds KV blocks and is scheduled every step
    FINISHED = "finished"  # generated max_new_tokens (or its stop token); blocks freed


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token: greedy (temperature 0, the default) or sampled.

    temperature > 0 samples from softmax(logits / temperature), optionally restricted to the
    ``top_k`` most likely tokens and to the smallest set whose probability reaches ``top_p``.
    ``seed`` seeds the request's own generator, so its samples don't depend on its batch.
    """

    temperature: float = 0.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None

    def __post_init__(self):
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise RequestError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if self.top_k is not None and not (isinstance(self.top_k, int) and self.top_k >= 1):
            raise RequestError(f"top_k must be None or an int >= 1, got {self.top_k!r}")
        if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise RequestError(f"top_p must be None or a number in (0, 1], got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = SamplingParams()
_ids = itertools.count()


@dataclass(eq=False)
class Request:
    """One generation request (compared by identity: two requests are never the same one).

    prompt: token ids (ints). max_new_tokens: tokens to generate (the request finishes after
    that many, or at ``stop_token``). arrival_time: when it reaches the server, in the
    engine clock's unit (seconds on a GPU, steps on the logical clock of sim mode).
    on_token: called as ``on_token(request, token)`` for every generated token (streaming).
    """

    prompt: Sequence[int]
    max_new_tokens: int
    sampling: SamplingParams = GREEDY
    arrival_time: float = 0.0
    request_id: object = None
    stop_token: Optional[int] = None
    on_token: Optional[Callable[["Request", int], None]] = field(default=None, repr=False)

    # Filled in by the engine.
    status: Status = field(default=Status.WAITING, init=False)
    output: list = field(default_factory=list, init=False)
    num_computed: int = field(default=0, init=False)  # tokens of prompt + output whose KV is cached
    num_preemptions: int = field(default=0, init=False)
    admitted_time: Optional[float] = field(default=None, init=False)
    first_token_time: Optional[float] = field(default=None, init=False)
    finish_time: Optional[float] = field(default=None, init=False)

    def __post_init__(self):
        if self.request_id is None:
            self.request_id = next(_ids)
        self.prompt = list(self.prompt) if not isinstance(self.prompt, (str, bytes)) else self.prompt

    @property
    def tokens(self) -> list:
        """prompt + output: every token whose keys and values the request needs cached."""
        return self.prompt + self.output

    def token_slice(self, start: int, stop: int) -> list:
        """``tokens[start:stop]`` without building the whole list (a decode step needs one token)."""
        n = len(self.prompt)
        if stop <= n:
            return self.prompt[start:stop]
        if start >= n:
            return self.output[start - n:stop - n]
        return self.prompt[start:] + self.output[:stop - n]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def num_pending(self) -> int:
        """Tokens the model must still run before this request can sample its next token."""
        return self.num_tokens - self.num_computed

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    def done_generating(self) -> bool:
        """Whether the output is complete: max_new_tokens reached or the stop token sampled."""
        if len(self.output) >= self.max_new_tokens:
            return True
        return self.stop_token is not None and bool(self.output) and self.output[-1] == self.stop_token

    def reset(self) -> None:
        """Forget everything the engine did, so the same request can be served again."""
        self.status, self.output, self.num_computed, self.num_preemptions = Status.WAITING, [], 0, 0
        self.admitted_time = self.first_token_time = self.finish_time = None

    def copy(self, **changes) -> "Request":
        """A fresh (unserved) copy of the client's part, with ``changes`` applied."""
        fields = dict(prompt=list(self.prompt), max_new_tokens=self.max_new_tokens, sampling=self.sampling,
                      arrival_time=self.arrival_time, request_id=self.request_id, stop_token=self.stop_token,
                      on_token=self.on_token)
        fields.update(changes)
        return Request(**fields)


def validate_request(request: Request, *, max_context: int, vocab_size: int | None = None,
                     max_blocks: int | None = None, block_size: int | None = None) -> None:
    """Raise :class:`RequestError` naming the field unless the engine can serve ``request``.

    max_context: the most tokens (prompt + generated) one sequence may hold (the model's
    context). max_blocks, block_size: the whole KV pool; a request that could not fit even
    alone would be preempted forever, so it is refused up front.
    """
    if not isinstance(request, Request):
        raise RequestError(f"request must be a labkit.serving.Request, got {type(request).__name__}")
    prompt = request.prompt
    if isinstance(prompt, (str, bytes)):
        raise RequestError("prompt must be a list of token ids, not text: encode it with the model's tokenizer")
    if len(prompt) == 0:
        raise RequestError(f"request {request.request_id!r}: prompt is empty (it needs at least one token)")
    bad = [t for t in prompt if not isinstance(t, int) or isinstance(t, bool)
           or t < 0 or (vocab_size is not None and t >= vocab_size)]
    if bad:
        want = f"ints in [0, {vocab_size})" if vocab_size is not None else "non-negative ints"
        raise RequestError(f"request {request.request_id!r}: prompt must hold token ids, {want}; got {bad[0]!r}")
    n = request.max_new_tokens
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise RequestError(f"request {request.request_id!r}: max_new_tokens must be an int >= 1, got {n!r}")
    if len(prompt) >= max_context:
        raise RequestError(f"request {request.request_id!r}: prompt of {len(prompt)} tokens is longer than the "
                           f"context allows (max_context={max_context}, and at least one token must be generated)")
    if len(prompt) + n > max_context:
        raise RequestError(f"request {request.request_id!r}: prompt ({len(prompt)}) + max_new_tokens ({n}) = "
                           f"{len(prompt) + n} exceeds max_context={max_context}")
    if max_blocks is not None and block_size is not None:
        need = -(-(len(prompt) + n) // block_size)
        if need > max_blocks:
            raise RequestError(f"request {request.request_id!r}: needs {need} KV blocks of {block_size} tokens, "
                               f"more than the whole pool ({max_blocks})")
    if not isinstance(request.sampling, SamplingParams):
        raise RequestError(f"request {request.request_id!r}: sampling must be a SamplingParams, "
                           f"got {type(request.sampling).__name__}")
    t = request.arrival_time
    if not (isinstance(t, (int, float)) and math.isfinite(t) and t >= 0):
        raise RequestError(f"request {request.request_id!r}: arrival_time must be a finite number >= 0, got {t!r}")
