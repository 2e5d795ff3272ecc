"""The online softmax: softmax(s)·V in one pass over a stream of (score, value) chunks.

The state after any prefix of the stream is ``(m, l, acc)``: the largest score seen ``m``,
``l = Σ exp(s_i - m)`` and ``acc = Σ exp(s_i - m) v_i``. A new chunk with a larger max
``m'`` only changes the common factor: every old term was ``exp(s_i - m)`` and must become
``exp(s_i - m') = exp(s_i - m) · exp(m - m')``, so ``l`` and ``acc`` are multiplied by
``alpha = exp(m - m')``. That rescaling is exact (up to rounding); at the end ``acc / l`` is
softmax(s)·V. Two states of disjoint parts of the stream merge the same way (split-K).

These are the reference versions (float64 tensors) behind notebook 02's demonstration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class State:
    """Running statistics of a stream: max ``m``, sum ``l``, accumulator ``acc`` [D]."""

    m: float
    l: float  # noqa: E741 - the name the derivation uses
    acc: torch.Tensor


def empty_state(D: int) -> State:
    """The state of an empty stream: m = -inf, l = 0, acc = 0 (the first chunk rescales by exp(-inf) = 0)."""
    return State(-math.inf, 0.0, torch.zeros(D, dtype=torch.float64))


def online_update(m: float, l: float, acc: torch.Tensor, scores: torch.Tensor, values: torch.Tensor):  # noqa: E741
    """Fold one chunk into the state. scores: [n]; values: [n, D] -> new ``(m, l, acc)``."""
    m_new = max(m, float(scores.max()))
    alpha = math.exp(m - m_new)  # 0 for the first chunk (m = -inf)
    p = torch.exp(scores.double() - m_new)
    return m_new, l * alpha + float(p.sum()), acc * alpha + p @ values.double()


def merge(a: State, b: State) -> State:
    """Combine the states of two disjoint parts of a stream (what split-K's merge kernel does)."""
    m = max(a.m, b.m)
    wa, wb = math.exp(a.m - m), math.exp(b.m - m)
    return State(m, a.l * wa + b.l * wb, a.acc * wa + b.acc * wb)


def stream(scores: torch.Tensor, values: torch.Tensor, chunks, update=online_update) -> list[State]:
    """Run ``update`` over ``scores`` [T] and ``values`` [T, D] cut into ``chunks`` (sizes summing to T).

    Returns the state after each chunk; ``states[-1].acc / states[-1].l`` is the attention output.
    """
    if sum(chunks) != scores.shape[0]:
        raise ValueError(f"chunks {list(chunks)} sum to {sum(chunks)}, expected T = {scores.shape[0]}")
    state, states, start = empty_state(values.shape[1]), [], 0
    for n in chunks:
        m, l, acc = update(state.m, state.l, state.acc, scores[start:start + n], values[start:start + n])  # noqa: E741
        state = State(float(m), float(l), acc)
        states.append(state)
        start += n
    return states


def softmax_attention(scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The two-pass answer in float64: softmax(scores) @ values. scores: [T]; values: [T, D] -> [D]."""
    return torch.softmax(scores.double(), dim=0) @ values.double()


__all__ = ["State", "empty_state", "merge", "online_update", "softmax_attention", "stream"]
