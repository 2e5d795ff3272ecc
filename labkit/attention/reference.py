"""The float64 reference every kernel is checked against."""

from __future__ import annotations

import math

import torch


def reference_decode(q, k, v, *, scale: float | None = None, lengths=None) -> torch.Tensor:
    """Decode attention in float64 on the CPU.

    q: [B, Hq, D]; k, v: [B, Hkv, T, D] (any float dtype); lengths: optional [B] valid KV
    lengths. Returns float64 [B, Hq, D] = softmax(q·kᵀ·scale)·v, scale = 1/sqrt(D) by default,
    query head h reading KV head h // (Hq / Hkv).
    """
    q64, k64, v64 = (t.detach().to("cpu", torch.float64) for t in (q, k, v))
    B, Hq, D = q64.shape
    Hkv, T = k64.shape[1], k64.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    group = Hq // Hkv
    k64 = k64.repeat_interleave(group, dim=1)
    v64 = v64.repeat_interleave(group, dim=1)
    scores = torch.einsum("bhd,bhtd->bht", q64, k64) * scale
    if lengths is not None:
        pos = torch.arange(T)
        mask = pos[None, :] >= lengths.detach().cpu().long()[:, None]
        scores = scores.masked_fill(mask[:, None, :], float("-inf"))
    return torch.einsum("bht,bhtd->bhd", torch.softmax(scores, dim=-1), v64)


def decode_bytes(B: int, Hq: int, Hkv: int, T: int, D: int, itemsize: int) -> int:
    """The fewest bytes one decode-attention step must move: read q, K, V once, write out once."""
    return itemsize * (2 * B * Hkv * T * D + 2 * B * Hq * D)
