"""How the Triton decode kernels are launched: tiles, warps, query heads per program, splits.

Decode attention is pure streaming: each K and V element is read once and used in two
multiply-adds per query head. A launch is fast when every SM has enough programs resident,
each with tile loads in flight, and when no program holds more registers than fit. This
module picks that shape per GPU; :mod:`labkit.attention.triton_decode` runs it.

* **Scores by reduction** (every GPU for one query head per KV head; the T4 always): a
  program broadcasts its ``[HEADS, D]`` queries against a ``[BLOCK_T, D]`` tile and sums
  over D. The product tile holds ``HEADS × BLOCK_T × D`` fp32 values in registers, so a
  wide GQA group must take small tiles or several programs (:data:`MAX_REDUCE_HEADS`).
* **Scores by ``tl.dot``** (GQA on sm_80+; one head with a 16-bit cache on sm_90+): the
  group's query heads are the rows of a matrix product on the tensor cores, padded to
  :data:`MIN_DOT_ROWS`; K and V are read once for the whole group and the register cost no
  longer grows with ``BLOCK_T × D``. The T4 stays on reductions (Triton's sm_75 ``tl.dot``
  is no faster there and decode needs none).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
import triton

from labkit import runtime
from labkit.attention.splits import MAX_SPLITS, num_splits_heuristic, sm_count

HEAD_DIMS = (16, 32, 64, 128, 256)  # powers of two: BLOCK_D = D, so every row is one contiguous load
MAX_REDUCE_HEADS = 4  # query heads per reduction program: 8 take 255 registers on sm_75 from 16 tokens
MIN_DOT_ROWS = 16  # tl.dot needs at least 16 rows; a GQA group is padded up to them
MAX_DOT_ROWS = 64  # a larger group (MQA) takes several programs per KV head


@dataclass(frozen=True)
class Config:
    """How the kernel is launched (``labkit`` picks it per GPU; tuning overrides it)."""

    block_t: int  # KV tokens per tile
    num_warps: int
    num_stages: int  # K/V tiles in flight per program (1: plain loads; more: cp.async prefetch, sm_80+)
    use_dot: bool = False  # scores and p·V on the tensor cores (GQA on sm_80+, one head on sm_90+)
    programs_per_sm: int = 4  # the split heuristic's target of resident programs per SM
    min_split_tiles: int = 1  # the heuristic gives each split at least this many tiles (its pipeline's fill)
    heads_on_n: bool = False  # quantized kernel, one warp: tokens as the MMA's M side, query heads as N


@functools.lru_cache(maxsize=None)
def capability(device_index: int | None = None) -> tuple[int, int]:
    """The GPU's compute capability; (7, 5), the T4's, in sim mode (the course's target)."""
    if runtime.is_sim() or not torch.cuda.is_available():
        return (7, 5)
    return torch.cuda.get_device_capability(device_index or 0)


def kernel_config(head_dim: int, group: int, cc: tuple[int, int] | None = None, *,
                  use_dot: bool | None = None, itemsize: int = 2) -> Config:
    """The launch configuration for a head dim, a GQA group size, a compute capability and
    the cache's bytes per element (``itemsize``: 2 for fp16/bf16, 4 for fp32).

    ``use_dot`` (default: GQA on sm_80+, and one head per KV head on sm_90+ with a 16-bit
    cache) picks the scoring path. Reductions hold the K and V tiles and the
    ``heads × BLOCK_T × D`` product in registers. ptxas on sm_75 (4 warps, fp16, D = 128,
    pointers aligned as a launch has them): one head takes 96 registers at 64 tokens and 128
    at 128; a 4-head group 185 at 32 tokens and 213 at 64; none spill, while 8 heads at 64
    tokens spill 100 bytes. The tile is ``8192 // D`` tokens for one head (``16384 // D`` on
    sm_90, which the H100 sweep measured fastest) and a product of 16K values for a group,
    which leaves room for several resident programs; no T4 has timed the alternatives. The
    tensor-core path takes 64-token tiles (120 registers for a 4-head group on sm_90a, no
    spills). For one head it pads 15 rows of zeros, so it costs 16× the multiply-adds; with a
    16-bit cache that stays far below what the tensor cores do while the tile streams, and its
    tiles go through shared memory, where a second stage (cp.async, one tile ahead) keeps each
    program's next loads in flight (80 registers, 38 KB of shared memory on sm_90a). The H200
    sweep (``triton_attention_nvidia-h200.json``) measured 64 tokens, 4 warps and 2 stages
    fastest for one head from 2k to 32k tokens, ahead of every reduction setting: 85.8% of
    the copy roofline at 8k against 77.7%. An fp32 cache stays on reductions (its ``tl.dot``
    runs on the FP32 cores). The sm_75 builds are compiled in tests/test_triton_decode.py (64
    KB of shared memory at most).
    """
    cc = cc or capability()
    if use_dot is None:
        use_dot = head_dim >= 16 and cc >= (8, 0) and (group > 1 or (cc >= (9, 0) and itemsize == 2))
    if use_dot:
        return Config(block_t=64, num_warps=4, num_stages=2 if group == 1 else 1, use_dot=True, programs_per_sm=4)
    heads = heads_per_program(group, False)
    block_t = min(128, (16384 if cc >= (9, 0) else 8192) // head_dim)
    if heads > 1:
        block_t = min(block_t, 16384 // (heads * head_dim))
    return Config(block_t=max(16, block_t), num_warps=4, num_stages=1, use_dot=False,
                  programs_per_sm=4 if heads == 1 else 2)


def heads_per_program(group: int, use_dot: bool) -> int:
    """Query heads one program serves from its read of K and V (a power of two: a tile's rows).

    Reductions: the group, up to :data:`MAX_REDUCE_HEADS`. ``tl.dot``: the group padded to
    at least :data:`MIN_DOT_ROWS` rows, at most :data:`MAX_DOT_ROWS`.
    """
    if use_dot:
        return min(max(triton.next_power_of_2(group), MIN_DOT_ROWS), MAX_DOT_ROWS)
    return min(triton.next_power_of_2(group), MAX_REDUCE_HEADS)


def short_context_block(block_t: int, T: int) -> int:
    """The tile for a context of ``T`` tokens: at most ``block_t``, at least 16, and small
    enough to give 16 tiles, so a short context still splits into many programs."""
    return min(block_t, max(16, triton.next_power_of_2(T) // 16))


def plan_splits(B: int, Hq: int, Hkv: int, T: int, cfg: Config, *, num_splits: int | None = None,
                device_index: int | None = None) -> int:
    """KV chunks per (sequence, KV head): ``num_splits`` or the heuristic, capped at the tiles
    of ``T`` and :data:`MAX_SPLITS`.

    The heuristic (:func:`labkit.attention.splits.num_splits_heuristic`) aims at
    ``cfg.programs_per_sm`` resident programs on every SM, with at least ``cfg.min_split_tiles``
    tiles each: 32 heads at batch 1 on an H200's 132 SMs become 32 × 16 = 512 programs.
    """
    group = Hq // Hkv
    heads = heads_per_program(group, cfg.use_dot)
    tiles = triton.cdiv(T, cfg.block_t)
    if num_splits is None:
        programs = B * Hkv * triton.cdiv(group, heads)
        num_splits = num_splits_heuristic(1, programs, T, sm_count(device_index), block_t=cfg.block_t,
                                          programs_per_sm=cfg.programs_per_sm,
                                          max_splits=max(1, min(MAX_SPLITS, tiles // cfg.min_split_tiles)))
    elif not isinstance(num_splits, int) or num_splits < 1:
        raise ValueError(f"num_splits must be a positive int, got {num_splits!r}")
    return max(1, min(num_splits, tiles, MAX_SPLITS))


def config_for(D: int, group: int, T: int, *, device_index: int | None = None, cc: tuple[int, int] | None = None,
               block_t=None, num_warps=None, num_stages=None, use_dot=None, short_context: bool = True,
               itemsize: int = 2) -> Config:
    """This GPU's (or compute capability ``cc``'s) :func:`kernel_config` for a cache of
    ``itemsize`` bytes per element, the tile shrunk for short contexts, then any overrides.

    A tile of fewer than 16 tokens is scored by reductions unless ``use_dot`` says otherwise:
    ``tl.dot`` needs 16 columns.
    """
    if use_dot is None and block_t is not None and block_t < 16:
        use_dot = False
    cfg = kernel_config(D, group, cc or capability(device_index), use_dot=use_dot, itemsize=itemsize)
    return overridden(cfg, T, block_t=block_t, num_warps=num_warps, num_stages=num_stages,
                      short_context=short_context)


def overridden(cfg: Config, T: int, *, block_t=None, num_warps=None, num_stages=None,
               short_context: bool = True) -> Config:
    """``cfg`` with its tile shrunk for a context of ``T`` tokens (``short_context``), then the
    tile, warps and stages that are given; the split plan's fields stay ``cfg``'s."""
    return replace(cfg, block_t=block_t or (short_context_block(cfg.block_t, T) if short_context else cfg.block_t),
                   num_warps=num_warps or cfg.num_warps, num_stages=num_stages or cfg.num_stages)


def default_splits(B: int, Hq: int, Hkv: int, T: int, D: int, device_index: int | None = None,
                   itemsize: int = 2) -> int:
    """The split count :func:`flash_decode` picks for this shape and cache dtype on this GPU."""
    cfg = config_for(D, Hq // Hkv, T, device_index=device_index, itemsize=itemsize)
    return plan_splits(B, Hq, Hkv, T, cfg, device_index=device_index)


_WORKSPACES: dict[tuple, list[torch.Tensor]] = {}  # device -> flat fp32 buffers, the newest (largest) last


def workspace(device: torch.device, B: int, Hq: int, num_splits: int, D: int):
    """Views ``(m [B, Hq, S], l [B, Hq, S], acc [B, Hq, S, D])`` of a cached fp32 buffer.

    One buffer per device, reused by every call: no allocation on the hot path (a serving
    engine's batch changes every step). When a call needs more, a buffer at least twice as
    large replaces it and the old one is kept alive, so a call captured in a CUDA graph keeps
    valid pointers while memory stays within twice the largest need. Calls on one stream run
    in order (every labkit kernel runs on torch's current stream), so sharing is safe.
    """
    n = B * Hq * num_splits
    need = n * (D + 2)
    buffers = _WORKSPACES.setdefault((device.type, device.index), [])
    if not buffers or buffers[-1].numel() < need:
        size = max(need, 2 * buffers[-1].numel() if buffers else 1 << 16)
        buffers.append(torch.empty(size, dtype=torch.float32, device=device))
    flat = buffers[-1]
    return (flat[:n].view(B, Hq, num_splits), flat[n:2 * n].view(B, Hq, num_splits),
            flat[2 * n:need].view(B, Hq, num_splits, D))


__all__ = ["HEAD_DIMS", "MAX_DOT_ROWS", "MAX_REDUCE_HEADS", "MAX_SPLITS", "MIN_DOT_ROWS", "Config", "capability",
           "config_for", "default_splits", "heads_per_program", "kernel_config", "overridden", "plan_splits",
           "short_context_block", "workspace"]
