"""Naive three-pass decode attention: the baseline every fused kernel is measured against.

Three separate steps, each a PyTorch op (one or more kernel launches) that writes its
whole result to device memory for the next step to read back:

1. **scores** ``s = (q·scale) Kᵀ``: reads q and K, writes ``[B, Hq, T]`` scores;
2. **softmax** ``p = softmax(s)``: reads the scores, writes ``[B, Hq, T]`` probabilities;
3. **output** ``o = p V``: reads the probabilities and V, writes ``[B, Hq, D]``.

Intermediates keep the inputs' dtype, as a straightforward PyTorch model would. With GQA
the query heads of a group are batched against their shared KV head (no copy of K or V).
:func:`pass_bytes` is the bytes model per pass and :func:`naive_passes` hands out each pass
with its real inputs so that it can be timed on its own (``labkit.bench.passes``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from labkit import runtime
from labkit.attention.reference import decode_bytes
from labkit.attention.validate import validate_decode

PASSES = ("scores", "softmax", "output")


def scores_pass(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Pass 1. q: [B, Hq, D]; k: [B, Hkv, T, D] -> scores [B, Hq, T] in q's dtype."""
    B, Hq, D = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    grouped = (q * scale).view(B, Hkv, Hq // Hkv, D)  # query heads next to the KV head they read
    return torch.matmul(grouped, k.transpose(-1, -2)).view(B, Hq, T)


def softmax_pass(scores: torch.Tensor) -> torch.Tensor:
    """Pass 2. scores: [B, Hq, T] -> probabilities [B, Hq, T], same dtype (max-subtracted, so no overflow)."""
    return torch.softmax(scores, dim=-1)


def output_pass(probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Pass 3. probs: [B, Hq, T]; v: [B, Hkv, T, D] -> output [B, Hq, D] in v's dtype."""
    B, Hq, T = probs.shape
    Hkv, D = v.shape[1], v.shape[3]
    return torch.matmul(probs.view(B, Hkv, Hq // Hkv, T), v).view(B, Hq, D)


def naive_decode(q, k, v, *, scale: float | None = None) -> torch.Tensor:
    """Decode attention in three passes through device memory.

    q: [B, Hq, D]; k, v: [B, Hkv, T, D]; fp16, fp32 (or bf16 where supported), Hq a
    multiple of Hkv. Returns [B, Hq, D] in q's dtype.
    """
    D = validate_decode(q, k, v, device=runtime.device())[4]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    return output_pass(softmax_pass(scores_pass(q, k, scale)), v)


def pass_bytes(B: int, Hq: int, Hkv: int, T: int, D: int, itemsize: int) -> dict[str, int]:
    """Bytes each pass moves, if it reads each input once and writes its output once.

    ``{"scores": q + K read, scores written; "softmax": scores read, probabilities written;
    "output": probabilities + V read, output written}``. Their sum exceeds
    :func:`~labkit.attention.reference.decode_bytes` by the round trips of the two
    ``[B, Hq, T]`` intermediates: ``4 · B · Hq · T · itemsize``.
    """
    q_or_out, kv, inter = B * Hq * D, B * Hkv * T * D, B * Hq * T
    return {
        "scores": itemsize * (q_or_out + kv + inter),
        "softmax": itemsize * (2 * inter),
        "output": itemsize * (inter + kv + q_or_out),
    }


def extra_bytes(B: int, Hq: int, Hkv: int, T: int, D: int, itemsize: int) -> int:
    """Bytes the three passes move beyond the fewest decode needs (the intermediates' round trips)."""
    return sum(pass_bytes(B, Hq, Hkv, T, D, itemsize).values()) - decode_bytes(B, Hq, Hkv, T, D, itemsize)


@dataclass
class Pass:
    """One pass, ready to run on its own: ``fn(*args)``."""

    name: str  # "scores", "softmax" or "output"
    fn: Callable[..., torch.Tensor]
    args: tuple  # its inputs: the previous pass's real output
    bytes: int  # from :func:`pass_bytes`


def naive_passes(q, k, v, *, scale: float | None = None) -> list[Pass]:
    """The three passes of :func:`naive_decode` on these inputs, each with its actual inputs.

    Runs the passes once to produce the intermediates, so each can then be timed alone.
    """
    B, Hq, Hkv, T, D = validate_decode(q, k, v, device=runtime.device())
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    nbytes = pass_bytes(B, Hq, Hkv, T, D, q.element_size())
    scores = scores_pass(q, k, scale)
    probs = softmax_pass(scores)
    return [
        Pass("scores", scores_pass, (q, k, scale), nbytes["scores"]),
        Pass("softmax", softmax_pass, (scores,), nbytes["softmax"]),
        Pass("output", output_pass, (probs, v), nbytes["output"]),
    ]


__all__ = ["PASSES", "Pass", "extra_bytes", "naive_decode", "naive_passes", "output_pass", "pass_bytes",
           "scores_pass", "softmax_pass"]
