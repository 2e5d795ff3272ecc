"""Next-token distributions and sampling: greedy, temperature, top-k, top-p.

Speculative decoding needs the distributions themselves (its rule compares the target's p
with the draft's q), so :func:`probs` returns the processed distribution and :func:`sample`
draws from one. Greedy decoding is ``temperature=0``: a one-hot distribution on the argmax,
which the acceptance rule handles like any other. Sampling never reads a value back to the
host (no ``.item()``), so a decode loop can run ahead of the GPU.
"""

from __future__ import annotations

import torch


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
          top_p: float | None = None) -> torch.Tensor:
    """The next-token distribution: logits [..., V] (any float dtype) -> float32 [..., V], rows sum to 1.

    temperature 0: one-hot on the argmax. top_k: keep the k most likely tokens. top_p: keep
    the smallest set of most likely tokens whose probability reaches top_p (at least one).
    """
    check_sampling(temperature, top_k, top_p)
    logits = logits.float()
    if temperature == 0:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        p_sorted = sorted_logits.softmax(-1)
        # Drop a token when the tokens more likely than it already reach top_p.
        drop_sorted = (p_sorted.cumsum(-1) - p_sorted) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def sample(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row from weights [..., V] (non-negative, need not sum to 1) -> int64 [...].

    The exponential race: argmax(w / E) with E ~ Exp(1) picks token i with probability
    w_i / Σw, with no host sync (``torch.multinomial`` may synchronise).
    """
    e = torch.empty(weights.shape, dtype=torch.float32, device=weights.device)
    e.exponential_(generator=generator).clamp_min_(1e-30)  # a zero would turn 0/0 into NaN
    return (weights.float() / e).argmax(-1)


def sample_logits(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                  top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next tokens int64 [...] from logits [..., V]: argmax when greedy, else a draw from :func:`probs`."""
    if temperature == 0:
        check_sampling(temperature, top_k, top_p)
        return logits.argmax(-1)
    return sample(probs(logits, temperature, top_k, top_p), generator)


def torch_top_p_sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                       top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The sort-based baseline the sampling kernels are timed against: ``sample(probs(logits, ...))``,
    a full ``torch.sort`` per row. logits [..., V] -> int64 [...]."""
    return sample(probs(logits, temperature, top_k, top_p), generator)
