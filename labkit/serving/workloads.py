"""Serving workloads: :mod:`labkit.kvcache.workload`'s seeded lengths and arrivals turned into requests.

:func:`labkit.kvcache.workload.generate_workload` draws prompt and output lengths from a mixture of
log-normal profiles and Poisson arrival times; :func:`make_requests` gives each a prompt of
real token ids (held-out text through the model's tokenizer, or seeded random ids) and makes
it a :class:`~labkit.serving.request.Request` for the engine.

:data:`SERVING_MIX` is the mixture the static-vs-continuous comparison uses: nine in ten
requests want a short answer, one in ten a long one. Mixed *output* lengths are what leave static
batching's slots idle: a batch runs as long as its longest answer.
"""

from __future__ import annotations

import random

from labkit.serving.request import GREEDY, Request, SamplingParams
from labkit.kvcache.workload import LengthMix, generate_workload

# For the shipped models (1024-token context): nine in ten requests want a short answer, one in
# ten a long one. Output lengths, not prompts, are what leave static batching's slots idle.
SERVING_MIX = (
    LengthMix("short", 0.9, prompt_median=64, prompt_sigma=0.6, output_median=20, output_sigma=0.7),
    LengthMix("long", 0.1, prompt_median=96, prompt_sigma=0.5, output_median=450, output_sigma=0.2),
)
# The same shape at about 1/16 the length, for sim mode and the toy runner.
SMALL_SERVING_MIX = (
    LengthMix("short", 0.9, prompt_median=5, prompt_sigma=0.5, output_median=3, output_sigma=0.6),
    LengthMix("long", 0.1, prompt_median=8, prompt_sigma=0.5, output_median=28, output_sigma=0.2),
)


def make_requests(num_requests: int, *, seed: int = 0, rate: float | None = None, mix=SERVING_MIX,
                  max_context: int = 1024, vocab_size: int | None = None, tokenizer=None, text: str | None = None,
                  sampling: SamplingParams = GREEDY) -> list[Request]:
    """``num_requests`` requests with lengths and arrivals from :func:`labkit.kvcache.workload.generate_workload`.

    rate: requests per clock unit (per second on a GPU, per step on sim mode's logical clock);
    None: all arrive at time 0. Prompts: slices of ``text`` encoded by ``tokenizer`` (the
    held-out text of the model's corpus when only a tokenizer is given), or seeded random ids
    below ``vocab_size``. Deterministic in ``seed``.
    """
    if (tokenizer is None) == (vocab_size is None):
        raise ValueError("give exactly one of tokenizer (prompts from text) or vocab_size (random prompts)")
    shape = generate_workload(num_requests, seed=seed, rate=rate, mix=mix, max_len=max_context)
    rng = random.Random(seed)
    ids = None
    if tokenizer is not None:
        if text is None:
            from labkit.model.corpus import load_text, split

            text = split(load_text())[1]
        ids = tokenizer.encode(text)
    requests = []
    for w in shape:
        if ids is not None:
            start = rng.randrange(max(1, len(ids) - w.prompt_len))
            prompt = ids[start:start + w.prompt_len]
        else:
            prompt = [rng.randrange(vocab_size) for _ in range(w.prompt_len)]
        requests.append(Request(prompt, w.output_len, sampling=sampling, arrival_time=w.arrival_time,
                                request_id=w.request_id))
    return requests


def describe(requests: list[Request], unit: str = "s") -> str:
    """A few lines about a workload: counts, prompt and output lengths, arrival span."""
    p = sorted(len(r.prompt) for r in requests)
    o = sorted(r.max_new_tokens for r in requests)
    span = max(r.arrival_time for r in requests) - min(r.arrival_time for r in requests)
    mid = len(p) // 2
    return (f"{len(requests)} requests arriving over {span:.3g} {unit}; prompt tokens: median {p[mid]}, "
            f"max {p[-1]}; output tokens: median {o[mid]}, max {o[-1]}, total {sum(o)}")
