"""How many programs to split a decode-attention problem into (flash-decoding's split-K).

Decode attention has one query per (sequence, head), so a kernel with one program per
(sequence, KV head) launches ``batch × kv_heads`` programs: 12 for GPT-2 small at batch 1.
A GPU runs one program per SM at a time in the simplest picture, so 12 programs on a T4's
40 SMs keep 30% of them busy and on an H100's 132 SMs 9%, however fast each program is.
Splitting every sequence's KV range into ``S`` chunks multiplies the programs by ``S``; a
small merge then combines the chunks' partial softmax results.
"""

from __future__ import annotations

import functools
import math

import torch

from labkit import runtime

MAX_SPLITS = 64  # bounds the workspace and the merge kernel's tile
LOG2E = 1.4426950408889634  # the kernels score in the log2 domain: exp(x) = exp2(x · log2 e)
GPU_SMS = {"T4": 40, "A100": 108, "H100": 132}


@functools.lru_cache(maxsize=None)
def sm_count(device_index: int | None = None, *, sim: int = GPU_SMS["T4"]) -> int:
    """Streaming multiprocessors of the GPU (40 on a T4, 132 on an H100; default: the current one).

    In sim mode (or with no GPU) ``sim``: the T4's 40 by default, the course's target, so the
    Triton interpreter plans the splits a T4 would run; Numba's simulator, which runs every
    CUDA thread as a Python thread, plans for fewer (:data:`labkit.attention.numba_fused.SIM_SMS`).
    """
    if runtime.is_sim() or not torch.cuda.is_available():
        return sim
    index = torch.cuda.current_device() if device_index is None else device_index
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_utilisation(programs: int, sms: int, resident_per_sm: int = 1) -> float:
    """Fraction of SM time doing work when ``programs`` equal programs run in waves.

    Each wave runs ``sms × resident_per_sm`` programs; the last wave may be partly empty,
    so 12 programs on 40 SMs give 12/40 = 0.30, and 96 programs give 96/120 = 0.80.
    """
    slots = sms * resident_per_sm
    return programs / (math.ceil(programs / slots) * slots)


def num_splits_heuristic(batch: int, kv_heads: int, T: int, sm_count: int, *, block_t: int = 64,
                         programs_per_sm: int = 4, max_splits: int = MAX_SPLITS) -> int:
    """How many chunks to split each sequence's KV range into.

    Decode attention is pure streaming, so the GPU is fast only when every SM has several
    programs resident, each with loads in flight. One wave holds ``programs_per_sm ×
    sm_count`` programs; we try every split count up to the one that fills that wave (never
    more splits than ``T`` has tiles of ``block_t`` tokens, nor ``max_splits``), round each to the number of equal whole-tile chunks it produces (so no
    split is left empty), and keep the one with the best :func:`sm_utilisation`, the larger
    on a tie. Wave quantisation matters: 8 sequences × 32 heads on 132 SMs at 4 programs
    each make 768 programs with 3 splits, a wave and a half (73% busy); 2 splits make 512,
    one wave at 97%, and the H200 run measured that as the faster.

    flash-attn's ``num_splits_heuristic`` (:func:`flash_attn_num_splits`) does the same with
    one wave of 2 × SMs thread blocks, taking the first split count whose wave efficiency is
    within 85% of the best: its blocks are big (128-256 keys per step on tensor cores); ours
    are small and many, so we ask for more programs per SM.
    """
    tiles = max(1, math.ceil(T / block_t))
    base = max(1, batch * kv_heads)
    want = math.ceil(programs_per_sm * sm_count / base)
    cap = max(1, min(want, tiles, max_splits))
    best, best_util = 1, 0.0
    for s in range(1, cap + 1):
        s = math.ceil(tiles / math.ceil(tiles / s))  # equal chunks of whole tiles
        util = sm_utilisation(base * s, sm_count, programs_per_sm)
        if util >= best_util:
            best, best_util = s, util
    return best


def flash_attn_num_splits(batch_heads: int, sm_count: int, n_blocks: int, max_splits: int = 128) -> int:
    """flash-attn's ``num_splits_heuristic`` (csrc/flash_attn/flash_api.cpp), for comparison.

    ``batch_heads``: batch × heads (× query blocks, 1 for decode); ``sm_count``: flash-attn
    passes 2 × SMs; ``n_blocks``: key blocks (128 keys for d ≤ 128). B=1, H=32, d=128,
    T=4096 gives 5 on a T4 (``sm_count=80``) and 7 on an H100 (``264``).
    """
    if batch_heads >= 0.8 * sm_count:
        return 1
    max_splits = min(max_splits, sm_count, n_blocks)
    eligible = [s for s in range(1, max_splits + 1)
                if s == 1 or math.ceil(n_blocks / s) != math.ceil(n_blocks / (s - 1))]
    eff = {s: (batch_heads * s / sm_count) / math.ceil(batch_heads * s / sm_count) for s in eligible}
    best = max(eff.values())
    return next(s for s in eligible if eff[s] >= 0.85 * best)


def chunk_bounds(T: int, num_splits: int) -> list[tuple[int, int]]:
    """Token ranges ``[start, stop)`` of each split when ``T`` tokens are cut into chunks of
    ``ceil(T / num_splits)`` (notebook 03's convention). Trailing chunks may be empty."""
    chunk = math.ceil(T / num_splits)
    return [(min(s * chunk, T), min((s + 1) * chunk, T)) for s in range(num_splits)]


def reference_partials(q, k, v, num_splits: int, *, scale: float | None = None):
    """Each chunk's partial softmax state in float64 on the CPU (natural-log domain).

    q: [B, Hq, D]; k, v: [B, Hkv, T, D]. Returns ``(m, l, acc)``: m, l [B, Hq, S] and acc
    [B, Hq, S, D] with, over the chunk's tokens t, ``m = max_t s_t``,
    ``l = Σ_t exp(s_t − m)`` and ``acc = Σ_t exp(s_t − m)·v_t``, ``s_t = scale·q·k_t``.
    An empty chunk has m = −inf, l = 0, acc = 0.
    """
    q64, k64, v64 = (t.detach().to("cpu", torch.float64) for t in (q, k, v))
    B, Hq, D = q64.shape
    Hkv, T = k64.shape[1], k64.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    k64 = k64.repeat_interleave(Hq // Hkv, dim=1)
    v64 = v64.repeat_interleave(Hq // Hkv, dim=1)
    scores = torch.einsum("bhd,bhtd->bht", q64, k64) * scale
    m = torch.full((B, Hq, num_splits), float("-inf"), dtype=torch.float64)
    l = torch.zeros((B, Hq, num_splits), dtype=torch.float64)
    acc = torch.zeros((B, Hq, num_splits, D), dtype=torch.float64)
    for s, (start, stop) in enumerate(chunk_bounds(T, num_splits)):
        if start == stop:
            continue
        m[..., s] = scores[..., start:stop].amax(dim=-1)
        p = torch.exp(scores[..., start:stop] - m[..., s, None])
        l[..., s] = p.sum(dim=-1)
        acc[..., s, :] = torch.einsum("bht,bhtd->bhd", p, v64[:, :, start:stop])
    return m, l, acc


def merge_reference(m, l, acc) -> torch.Tensor:
    """Merge partials by log-sum-exp in float64: ``Σ e^(m_s − M)·acc_s / Σ e^(m_s − M)·l_s``, M = max_s m_s.

    m, l: [B, Hq, S]; acc: [B, Hq, S, D] (natural-log domain). Returns [B, Hq, D] float64.
    """
    m, l, acc = (t.detach().to("cpu", torch.float64) for t in (m, l, acc))
    w = torch.exp(m - m.amax(dim=-1, keepdim=True))
    return (w[..., None] * acc).sum(dim=-2) / (w * l).sum(dim=-1)[..., None]


__all__ = ["GPU_SMS", "MAX_SPLITS", "chunk_bounds", "flash_attn_num_splits", "merge_reference", "num_splits_heuristic",
           "reference_partials", "sm_count", "sm_utilisation"]
