"""Launching the sampling kernels: :func:`sample_top_p` launches any kernel with notebook 06's
exercise signature (labkit's own is :mod:`labkit.decoding.sampling_bisect`);
:func:`sample_top_k_top_p` launches the fast top-k/top-p kernel
(:mod:`labkit.decoding.sampling_triton`) with its tile sizes.

:func:`~labkit.decoding.sampling_keys.ordered_key`, the float key the kernels search over, is
re-exported here for the notebook.
"""

from __future__ import annotations

import torch
import triton

from labkit.decoding.sampling_keys import ordered_key


def _block_v(V: int) -> int:
    return min(4096, max(16, triton.next_power_of_2(V)))


def sample_top_p(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 0.9, seed: int = 0, *,
                 num_samples: int = 1, kernel=None) -> torch.Tensor:
    """Launch a kernel with :func:`labkit.decoding.sampling_bisect.top_p_sample_kernel`'s signature
    (default: that one), one program per row of ``logits [B, V]`` (any float dtype) -> int64 ``[B]``
    (``[B, num_samples]`` when ``num_samples > 1``; ``[]`` for one row ``[V]``)."""
    from labkit.decoding.sampling import check_sampling

    check_sampling(temperature, None, top_p)
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (0 is greedy: use logits.argmax(-1))")
    rows = logits.reshape(1, -1) if logits.dim() == 1 else logits
    if rows.dim() != 2:
        raise ValueError(f"logits must be [V] or [B, V], got {list(logits.shape)}")
    rows = rows if rows.stride(-1) == 1 else rows.contiguous()
    B, V = rows.shape
    S = triton.next_power_of_2(num_samples)
    if num_samples < 1 or S * B * V >= 2**31:
        raise ValueError(f"num_samples must be >= 1 with num_samples * B * V < 2**31, got {num_samples}")
    out = torch.full((B, S), -1, dtype=torch.int64, device=rows.device)
    block_v = _block_v(V) if S == 1 else max(16, min(_block_v(V), 8192 // S))
    if kernel is None:
        from labkit.decoding.sampling_bisect import top_p_sample_kernel as kernel
    kernel[(B,)](rows, out, V, rows.stride(0), 1.0 / temperature, float(top_p), int(seed) & 0x7FFFFFFF,
                 BLOCK_V=block_v, SAMPLES=S)
    out = out[:, :num_samples]
    out = out[:, 0] if num_samples == 1 else out
    return out[0] if logits.dim() == 1 else out


NPIV = 4  # thresholds per search pass: 2 bits of the threshold a pass
SEARCH_BLOCK = 1024  # candidates per tile of a search pass
SEARCH_WARPS = 8  # warps of one program (one row) above 8k tokens


def search_tiles(V: int, samples: int = 1) -> tuple[int, int]:
    """``(BLOCK_S, num_warps)`` for a row of ``V`` tokens and ``samples`` draws.

    A search pass keeps ``BLOCK_S × NPIV`` counters and sums in registers; the last pass keeps
    ``samples × BLOCK_S`` scores, so many draws take a narrower tile.
    """
    block = min(_block_v(V), SEARCH_BLOCK)
    warps = 4 if V <= 8192 else SEARCH_WARPS
    return (block, warps) if samples == 1 else (max(16, min(block, 8192 // samples)), warps)


def sample_top_k_top_p(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                       top_p: float | None = None, seed: int = 0, *, num_samples: int = 1,
                       kernel=None) -> torch.Tensor:
    """Tokens drawn from each row of ``logits [B, V]`` (or ``[V]``) after top-k/top-p -> int64.

    Returns ``[B]`` (``[]`` for one row) with ``num_samples == 1``, else ``[B, num_samples]``
    independent draws per row. The same distribution as
    ``sample(probs(logits, temperature, top_k, top_p))`` (``labkit.decoding.sampling``) for a
    temperature > 0. ``kernel`` swaps in another kernel with the same signature (the notebook's
    exercise). The same ``seed`` gives the same tokens.
    """
    from labkit.decoding.sampling import check_sampling

    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        raise ValueError("temperature 0 is greedy: use logits.argmax(-1)")
    squeeze = logits.dim() == 1
    rows = logits.reshape(1, -1) if squeeze else logits
    if rows.dim() != 2:
        raise ValueError(f"logits must be [V] or [B, V], got {list(logits.shape)}")
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    B, V = rows.shape
    if num_samples < 1 or num_samples > 1024 or (num_samples * B * V) >= 2**31:
        # every draw of a row lives in registers during the last pass: more would not compile in reasonable time
        raise ValueError(f"num_samples must be in [1, 1024] with num_samples * B * V < 2**31, got {num_samples} "
                         "(for more draws, call again with another seed)")
    S = triton.next_power_of_2(num_samples)
    out = torch.empty(B, S, dtype=torch.int64, device=rows.device)
    use_k = top_k is not None and top_k < V
    use_p = top_p is not None and top_p < 1
    if kernel is None:
        from labkit.decoding.sampling_triton import top_k_top_p_sample_kernel as kernel
    block_v = _block_v(V)
    block_s, warps = search_tiles(V, S)
    cand_p = torch.empty(B, V, dtype=torch.float32, device=rows.device)
    cand_i = torch.empty(B, V, dtype=torch.int32, device=rows.device)
    work = torch.empty(B, V, dtype=torch.float32, device=rows.device) if use_p else cand_p
    kernel[(B,)](rows, out, V, rows.stride(0), 1.0 / temperature, int(top_k or V), float(top_p or 1.0),
                 int(seed) & 0x7FFFFFFF, cand_p, cand_i, work, USE_TOP_K=use_k, USE_TOP_P=use_p,
                 BLOCK_V=block_v, BLOCK_S=block_s, NPIV=NPIV, SAMPLES=S, num_warps=warps)
    out = out[:, :num_samples]
    if num_samples == 1:
        out = out[:, 0]
    return out[0] if squeeze else out


__all__ = ["NPIV", "SEARCH_BLOCK", "SEARCH_WARPS", "ordered_key", "sample_top_k_top_p", "sample_top_p", "search_tiles"]
