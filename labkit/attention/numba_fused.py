"""Fused decode attention in Numba CUDA, the host side: plan the launch, cache workspaces, launch.

The kernel (:mod:`labkit.attention.numba_kernels`) streams K and V once with an online
softmax; a grid of ``(B * Hkv * head_chunks, splits)`` blocks gives every SM work even at
batch 1 (split-K), and the last block of each group merges the splits in the same launch.
:func:`numba_decode` therefore launches one kernel, allocates nothing on the hot path when
``out=`` is given (the workspace is cached per shape), never synchronises with the host and
launches on torch's current stream: after one call outside, a call can be captured in a CUDA
graph. Notebook 02's exercise kernel is launched by :mod:`labkit.attention.numba_exercises`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from labkit import runtime
from labkit.attention.splits import LOG2E, sm_count, sm_utilisation
from labkit.attention.numba_kernels import KernelConfig, make_split_kernel
from labkit.attention.validate import FP16_FP32, check_out, validate_decode
from labkit.attention.numba_bridge import launch, resident_blocks

HEAD_DIMS = (64, 128)

# 64-token tiles, 256 threads: a warp loads whole rows (32 lanes × 8 bytes for D = 128 fp16),
# 8 rows at a time, 8 rows per thread per tile. ptxas: 56-72 registers for one head per block,
# no spills (sm_75 and sm_90), so 4 blocks (1024 threads) are resident per SM.
GPU_CONFIG = KernelConfig(tile=64, threads=256, lanes=32, max_group=4, blocks_per_sm=8, min_tiles=2,
                          resident_per_sm=4)
# sm_90 (H100/H200): the H200 sweep (data/results/numba_tuning_nvidia-h200.json) measured
# 128-token tiles within 3% of the best configuration in every cell. Its 35 KB of shared memory
# per block would leave a T4's 64 KB SM one block, so the T4 keeps 64. Forced split counts
# (numba_splits_nvidia-h200.json) were fastest at about 2 blocks per SM, though 3 fit: two
# already keep an SM's loads in flight, and every extra split is one more partial to merge.
SM90_CONFIG = KernelConfig(tile=128, threads=256, lanes=32, max_group=4, blocks_per_sm=2, min_tiles=2,
                           resident_per_sm=4)
# The simulator runs one Python thread per CUDA thread: small blocks keep it quick.
SIM_CONFIG = KernelConfig(tile=8, threads=16, lanes=8, max_group=4, blocks_per_sm=2, min_tiles=1,
                          resident_per_sm=2)
SIM_SMS = 2  # and a pretend SM count: enough to exercise split-K, small enough to be quick

_KERNELS: dict = {}


def split_kernel(D: int, G: int, dtype: torch.dtype, cfg: KernelConfig, clamp: bool = False):
    """The split kernel for head dim ``D``, ``G`` query heads per block and cache ``dtype`` (built once)."""
    key = (D, G, dtype, cfg.tile, cfg.threads, cfg.lanes, cfg.max_registers, clamp)  # what the compiler sees
    if key not in _KERNELS:
        _KERNELS[key] = make_split_kernel(D, G, dtype == torch.float16, cfg, clamp)
    return _KERNELS[key]


def default_config() -> KernelConfig:
    """The simulator's small blocks, :data:`SM90_CONFIG` on sm_90 and later, else the T4's :data:`GPU_CONFIG`."""
    if runtime.is_sim():
        return SIM_CONFIG
    return SM90_CONFIG if torch.cuda.get_device_capability() >= (9, 0) else GPU_CONFIG


@dataclass(frozen=True)
class Plan:
    """How :func:`numba_decode` launches one shape."""

    heads_per_block: int  # query heads sharing one read of K/V in a block
    splits: int  # blocks along the sequence
    chunk: int  # tokens per split (a multiple of the tile)
    grid: tuple[int, int]
    threads: int
    resident: int  # blocks of this kernel one SM can hold (from the compiled kernel, else the config's)


def heads_per_block(group: int, cfg: KernelConfig) -> int:
    """Query heads one block serves: the largest divisor of the GQA ``group`` up to ``cfg.max_group``."""
    return max(d for d in range(1, min(group, cfg.max_group) + 1) if group % d == 0)


def plan(B: int, Hq: int, Hkv: int, T: int, *, splits: int | None = None, cfg: KernelConfig | None = None,
         sms: int | None = None, resident: int | None = None) -> Plan:
    """The launch for one shape: heads per block, then splits from the SM count (or ``splits``).

    Splits are chosen so the grid holds about ``cfg.blocks_per_sm`` blocks per SM in whole
    waves of ``sms * min(resident, cfg.blocks_per_sm)`` blocks (``resident``, the blocks an SM
    can hold, defaults to ``cfg.resident_per_sm``),
    every split walking at least ``cfg.min_tiles`` tiles; the chunk is rounded up to whole
    tiles and the split count recomputed, so no split is empty.
    """
    cfg = cfg or default_config()
    g = heads_per_block(Hq // Hkv, cfg)
    blocks = B * Hkv * (Hq // Hkv // g)
    resident = resident or cfg.resident_per_sm
    if splits is None:
        splits = _wave_splits(blocks, T, cfg, sms or sm_count(sim=SIM_SMS), min(resident, cfg.blocks_per_sm))
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    chunk = _chunk(T, splits, cfg.tile)
    splits = math.ceil(T / chunk)
    return Plan(g, splits, chunk, (blocks, splits), cfg.threads, resident)


def _chunk(T: int, splits: int, tile: int) -> int:
    return math.ceil(math.ceil(T / splits) / tile) * tile


def _wave_splits(blocks: int, T: int, cfg: KernelConfig, sms: int, resident: int) -> int:
    """Splits near ``cfg.blocks_per_sm`` blocks per SM whose grid best fills whole waves.

    A wave is ``sms * resident`` blocks; a grid of 2.4 waves runs its last wave mostly empty.
    Among half to twice the wanted split count (each split at least ``cfg.min_tiles`` tiles),
    take the one with the fullest waves, then the fewest. The cap on splits is scored like the
    rest: 32 heads × 16 splits are 512 blocks, two waves of 2 × 132, and 8 splits are faster.
    """
    want = math.ceil(cfg.blocks_per_sm * sms / blocks)
    cap = max(1, T // (cfg.min_tiles * cfg.tile))
    low = max(1, (min(want, cap) + 1) // 2)

    def score(s):
        n = blocks * math.ceil(T / _chunk(T, s, cfg.tile))  # the grid after rounding chunks to tiles
        return (-round(sm_utilisation(n, sms, resident), 2), n)

    return min(range(low, min(2 * want, cap) + 1), key=score)


_WORKSPACES: dict = {}


def workspace(device: torch.device, B: int, Hq: int, splits: int, D: int, groups: int):
    """The cached ``(partials, counters)`` of one shape: float32 ``[B * Hq * splits * (D + 2)]``
    (each split's ``acc``, ``m``, ``l``) and int32 ``[groups]`` zeros, which the kernel leaves at zero.

    Reused across calls (calls on one stream run in order; don't run one shape on two streams
    at once): no allocation on the hot path, and a CUDA graph captured after the first call
    keeps pointing at them.
    """
    key = (device.type, device.index, B, Hq, splits, D, groups)
    ws = _WORKSPACES.get(key)
    if ws is None:
        ws = _WORKSPACES[key] = (torch.empty(max(1, B * Hq * splits * (D + 2)) if splits > 1 else 1,
                                             dtype=torch.float32, device=device),
                                 torch.zeros(groups, dtype=torch.int32, device=device))
    return ws


def _words(name: str, t: torch.Tensor) -> torch.Tensor:
    """The cache's bytes as a flat int64 tensor (a view): the kernel loads 8 bytes at a time."""
    if t.data_ptr() % 8:
        raise ValueError(f"{name} must start at an 8-byte aligned address (a slice with an odd offset "
                         f"is not); call .clone()")
    return t.view(torch.int64).view(-1)


def numba_decode(q, k, v, *, scale: float | None = None, splits: int | None = None,
                 config: KernelConfig | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Fused split-K decode attention, one launch (see :mod:`labkit.attention.numba_kernels`).

    q: [B, Hq, D]; k, v: [B, Hkv, T, D]; fp16 or fp32, D 64 or 128, Hq a multiple of Hkv,
    contiguous, on labkit's device. Returns [B, Hq, D] in q's dtype, written into ``out``
    when given (same shape, dtype and device as q). ``splits`` overrides the split count;
    ``config`` the kernel's compile-time shape.
    """
    B, Hq, Hkv, T, D = validate_decode(q, k, v, dtypes=FP16_FP32, head_dims=HEAD_DIMS, device=runtime.device())
    cfg = config or default_config()
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    out = check_out(out, q)
    p, kernel, args, tail = _prepare(q, k, v, out, scale, splits, cfg)
    launch(kernel, p.grid, p.threads, *args, *workspace(q.device, B, Hq, p.splits, D, p.grid[0]), *tail, p.chunk)
    return out


def _prepare(q, k, v, out, scale, splits, cfg):
    """The kernel, its plan (splits from the compiled kernel's residency) and its arguments but the workspace."""
    B, Hq, D = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    args = [q.view(-1), _words("k", k), _words("v", v), out.view(-1)]
    kernel = split_kernel(D, heads_per_block(Hq // Hkv, cfg), q.dtype, cfg, clamp=T < cfg.tile)
    tail = [np.float32(scale * LOG2E), T, Hkv, Hq // Hkv]
    resident = resident_blocks(kernel, cfg.threads, *args, *workspace(q.device, 1, 1, 1, D, 1), *tail, cfg.tile)
    return plan(B, Hq, Hkv, T, splits=splits, cfg=cfg, resident=resident), kernel, args, tail


def launch_plan(q, k, v, *, splits: int | None = None, config: KernelConfig | None = None) -> Plan:
    """The :class:`Plan` :func:`numba_decode` launches for these inputs: its split count comes
    from the compiled kernel's registers and shared memory (blocks resident per SM), which
    only the GPU's compiler knows; benchmarks record it from here."""
    validate_decode(q, k, v, dtypes=FP16_FP32, head_dims=HEAD_DIMS, device=runtime.device())
    return _prepare(q, k, v, q, 1.0, splits, config or default_config())[0]


__all__ = ["GPU_CONFIG", "HEAD_DIMS", "KernelConfig", "Plan", "SIM_CONFIG", "SM90_CONFIG", "SIM_SMS",
           "heads_per_block", "launch_plan", "numba_decode", "plan", "split_kernel", "workspace"]
