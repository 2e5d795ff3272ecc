"""Seeded serving workloads: requests with mixed prompt and output lengths and Poisson arrivals.

Real traffic mixes short chat turns with long documents (summarise this, answer from that
file), and its lengths are heavy-tailed, roughly log-normal. A workload here is a list of
:class:`Request` drawn from a mixture of log-normal length profiles (:class:`LengthMix`), with
arrival times of a Poisson process (exponential gaps at ``rate`` requests a second). The same
seed gives the same workload, so results over it can be compared and recorded.

Used by the paged-cache notebook (memory waste) and the serving engine (arrivals).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Request:
    """One request: a prompt to prefill, then ``output_len`` tokens to generate."""

    request_id: int  # unique within a workload, in arrival order
    prompt_len: int  # tokens in the prompt (>= 1)
    output_len: int  # tokens to generate (>= 1)
    arrival_time: float = 0.0  # seconds since the start of the run
    kind: str = ""  # which LengthMix it was drawn from ("chat", "document", ...)

    @property
    def total_len(self) -> int:
        """Tokens the request's KV cache holds when it finishes."""
        return self.prompt_len + self.output_len


@dataclass(frozen=True)
class LengthMix:
    """One kind of request: a share of the traffic and log-normal prompt and output lengths."""

    kind: str
    weight: float  # relative share of requests
    prompt_median: float  # tokens
    prompt_sigma: float  # log-space standard deviation (spread)
    output_median: float
    output_sigma: float


# Chat turns: short prompts and answers. Documents: long prompts, medium answers.
DEFAULT_MIX = (
    LengthMix("chat", 0.7, prompt_median=120, prompt_sigma=0.8, output_median=160, output_sigma=0.7),
    LengthMix("document", 0.3, prompt_median=1500, prompt_sigma=0.5, output_median=250, output_sigma=0.6),
)
# The same shape at about 1/16 the length, for sim mode's tiny models and caches.
SMALL_MIX = (
    LengthMix("chat", 0.7, prompt_median=8, prompt_sigma=0.6, output_median=10, output_sigma=0.5),
    LengthMix("document", 0.3, prompt_median=90, prompt_sigma=0.4, output_median=16, output_sigma=0.5),
)


def poisson_arrivals(n: int, rate: float | None, rng: np.random.Generator) -> np.ndarray:
    """``n`` arrival times (seconds, increasing) of a Poisson process at ``rate`` per second.

    The gaps are exponential with mean 1/rate; the first request arrives at 0. ``rate=None``
    (or inf): everything arrives at once, at 0 (an offline batch).
    """
    if rate is None or np.isinf(rate):
        return np.zeros(n)
    if rate <= 0:
        raise ValueError(f"rate must be positive (requests per second), got {rate}")
    gaps = rng.exponential(1.0 / rate, size=n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def generate_workload(num_requests: int = 256, *, seed: int = 0, rate: float | None = None,
                      mix: tuple[LengthMix, ...] = DEFAULT_MIX, max_len: int = 4096) -> list[Request]:
    """``num_requests`` requests drawn from ``mix``, arriving as a Poisson process at ``rate`` per second.

    Lengths are log-normal around each kind's medians, rounded, at least 1, and clipped so that
    ``prompt_len + output_len <= max_len`` (the model's context). Deterministic in ``seed``.
    """
    if num_requests < 1:
        raise ValueError(f"num_requests must be at least 1, got {num_requests}")
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2 (one prompt and one output token), got {max_len}")
    rng = np.random.default_rng(seed)
    weights = np.array([m.weight for m in mix], dtype=float)
    which = rng.choice(len(mix), size=num_requests, p=weights / weights.sum())
    medians = np.array([[m.prompt_median, m.output_median] for m in mix])[which]
    sigmas = np.array([[m.prompt_sigma, m.output_sigma] for m in mix])[which]
    lengths = np.rint(np.exp(rng.normal(np.log(medians), sigmas))).astype(int)
    prompt = np.clip(lengths[:, 0], 1, max_len - 1)
    output = np.clip(lengths[:, 1], 1, max_len - prompt)
    arrivals = poisson_arrivals(num_requests, rate, rng)
    return [Request(i, int(p), int(o), float(t), mix[k].kind)
            for i, (p, o, t, k) in enumerate(zip(prompt, output, arrivals, which))]


def summarize(requests: list[Request]) -> dict:
    """Counts and mean lengths per kind, and overall (for printing a workload)."""
    out = {}
    for kind in sorted({r.kind for r in requests}) + ["all"]:
        rs = [r for r in requests if kind in ("all", r.kind)]
        out[kind] = {"requests": len(rs), "mean_prompt": float(np.mean([r.prompt_len for r in rs])),
                     "mean_output": float(np.mean([r.output_len for r in rs])),
                     "max_total": max(r.total_len for r in rs)}
    return out
