"""One decode step with RoPE, unfused and fused, and what each costs in launches and bytes.

A decode step of one attention layer, after the q/k/v projections of the new token:

1. rotate the query and the new key by RoPE at the token's position;
2. write the rotated key and the value into the KV cache;
3. attend: the query against every cached key and value.

**Unfused** (:func:`unfused_decode_step`): RoPE as PyTorch ops on q and k
(:func:`labkit.rope.rope_ops`), two scatters into the cache, then the attention kernel on the
rotated query. **Fused** (:func:`fused_decode_step`): one Triton launch rotates the key and
writes key and value (:func:`labkit.rope.write.write_kv_rope`), and the attention
kernel rotates the query as it loads it (``flash_decode(..., rope=...)``).

:func:`decode_step_costs` counts both paths' launches and bytes for a shape: the PyTorch ops
are counted by running them on shape-only ("meta") tensors under a dispatch mode, so the
counts are those of the code as written, at any size, without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from labkit.attention.reference import decode_bytes, reference_decode
from labkit.rope.reference import apply_rope, rope_ops


def _flash_decode():
    from labkit.attention.triton_decode import flash_decode

    return flash_decode


def unfused_decode_step(q, k_new, v_new, k_cache, v_cache, positions, cos, sin, *, rows=None, lengths=None):
    """RoPE as PyTorch ops, cache write by indexing, attention on the rotated query.

    q: [B, Hq, D]; k_new, v_new: [B, Hkv, D]; k_cache, v_cache: [B, Hkv, T, D] (written in
    place at slot ``positions[b]`` of row b); positions: [B] int32, the new token's position;
    cos, sin: [max_len, D/2]. rows (``arange(B)``) and lengths (``positions + 1``) may be
    passed precomputed. Returns the attention output [B, Hq, D] in q's dtype.
    """
    rows = torch.arange(q.shape[0], device=q.device) if rows is None else rows
    lengths = positions + 1 if lengths is None else lengths
    q_rot = rope_ops(q, positions[:, None], cos, sin)
    k_rot = rope_ops(k_new, positions[:, None], cos, sin)
    # Advanced indices on dims 0 and 2 around a slice: the indexed view is [B, Hkv, D].
    k_cache[rows, :, positions] = k_rot
    v_cache[rows, :, positions] = v_new
    return _flash_decode()(q_rot, k_cache, v_cache, lengths=lengths)


def fused_decode_step(q, k_new, v_new, k_cache, v_cache, positions, cos, sin, *, rows=None, lengths=None):
    """The same step in two kernels: :func:`write_kv_rope`, then attention that rotates q as it loads it.

    Arguments as :func:`unfused_decode_step`. Index values are not checked (no device sync).
    """
    from labkit.rope.write import write_kv_rope

    rows = torch.arange(q.shape[0], device=q.device) if rows is None else rows
    lengths = positions + 1 if lengths is None else lengths
    write_kv_rope(k_new, v_new, k_cache, v_cache, rows, positions, (cos, sin, positions), check_indices=False)
    return _flash_decode()(q, k_cache, v_cache, lengths=lengths, rope=(cos, sin, positions))


def reference_decode_step(q, k_new, v_new, k_cache, v_cache, positions, cos, sin):
    """The float64 answer of a decode step, leaving the caches untouched.

    Returns ``(out [B, Hq, D], k_cache, v_cache)`` in float64 on the CPU: the attention output
    and the caches as they must be after the write (rotated key and value at slot positions[b]).
    """
    c64, s64, pos = cos.double().cpu(), sin.double().cpu(), positions.long().cpu()
    q64, kn64, vn64 = (t.detach().double().cpu() for t in (q, k_new, v_new))
    k64, v64 = k_cache.detach().double().cpu().clone(), v_cache.detach().double().cpu().clone()
    rows = torch.arange(q.shape[0])
    k64[rows, :, pos] = apply_rope(kn64, pos[:, None], c64, s64)
    v64[rows, :, pos] = vn64
    out = reference_decode(apply_rope(q64, pos[:, None], c64, s64), k64, v64, lengths=pos + 1)
    return out, k64, v64


@dataclass
class StepCost:
    """One kernel-launching stage of a decode step."""

    path: str  # "unfused" or "fused"
    stage: str  # what it does
    launches: int  # kernel launches
    bytes: int  # bytes it reads and writes in device memory


class _OpCounter(TorchDispatchMode):
    """Counts the kernels PyTorch ops launch (views launch none) and the bytes each moves."""

    def __init__(self):
        super().__init__()
        self.launches, self.bytes = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            return out
        name = func.overloadpacket.__name__
        flat = [a for a in args if isinstance(a, torch.Tensor)] + [
            t for a in args if isinstance(a, (list, tuple)) for t in a if isinstance(t, torch.Tensor)]
        size = lambda t: t.numel() * t.element_size()  # noqa: E731
        if name == "index":  # a gather reads only the rows it returns
            moved = 2 * size(out) + sum(size(t) for t in args[1] if t is not None)
        elif name == "index_put_":  # a scatter writes only the values it is given
            moved = 2 * size(args[2]) + sum(size(t) for t in args[1] if t is not None)
        else:
            moved = sum(size(t) for t in flat) + (size(out) if isinstance(out, torch.Tensor) else 0)
        self.launches += 1
        self.bytes += moved
        return out


def count_torch_ops(fn, *args) -> tuple[int, int]:
    """``(launches, bytes)`` of ``fn(*args)``'s PyTorch ops; pass "meta" tensors to count at any size."""
    counter = _OpCounter()
    with counter:
        fn(*args)
    return counter.launches, counter.bytes


def decode_step_costs(B: int, Hq: int, Hkv: int, T: int, D: int, dtype: torch.dtype = torch.float16,
                      max_len: int | None = None) -> list[StepCost]:
    """Launches and bytes of each stage of the unfused and the fused decode step at one shape.

    PyTorch stages are counted from the code as written (see :func:`count_torch_ops`); Triton
    stages from what their kernels read and write. Attention reads q, K, V and writes the
    output (:func:`~labkit.attention.reference.decode_bytes`); the fused one also reads the
    cos/sin rows. The attention kernel's launches are counted as one in both paths (a split-K
    kernel adds a merge launch to both).
    """
    max_len = max_len or T
    s = torch.empty((), dtype=dtype).element_size()
    meta = dict(device="meta")
    q = torch.empty(B, Hq, D, dtype=dtype, **meta)
    kv_new = torch.empty(B, Hkv, D, dtype=dtype, **meta)
    cache = torch.empty(B, Hkv, T, D, dtype=dtype, **meta)
    cos = torch.empty(max_len, D // 2, dtype=torch.float32, **meta)
    pos = torch.empty(B, dtype=torch.int32, **meta)
    rows = torch.empty(B, dtype=torch.int64, **meta)
    attn = decode_bytes(B, Hq, Hkv, T, D, s)
    table_rows = 2 * B * (D // 2) * 4  # the cos and sin rows of each sequence's position

    def write(k_rot, v_new):
        cache[rows, :, pos] = k_rot
        cache[rows, :, pos] = v_new

    costs = [
        StepCost("unfused", "RoPE on q (PyTorch ops)", *count_torch_ops(rope_ops, q, pos[:, None], cos, cos)),
        StepCost("unfused", "RoPE on k (PyTorch ops)", *count_torch_ops(rope_ops, kv_new, pos[:, None], cos, cos)),
        StepCost("unfused", "write k, v into the cache", *count_torch_ops(write, kv_new, kv_new)),
        StepCost("unfused", "attention", 1, attn),
        StepCost("fused", "write_kv_rope (rotate k, write k, v)", 1, 4 * B * Hkv * D * s + table_rows + B * (8 + 4)),
        StepCost("fused", "attention, q rotated as loaded", 1, attn + table_rows + B * 4),
    ]
    return costs


def summarize_costs(costs: list[StepCost]) -> dict:
    """Totals per path and what fusion saves: ``{"unfused": {...}, "fused": {...}, "saved": {...}}``."""
    out = {p: {"launches": sum(c.launches for c in costs if c.path == p),
               "bytes": sum(c.bytes for c in costs if c.path == p)} for p in ("unfused", "fused")}
    out["saved"] = {k: out["unfused"][k] - out["fused"][k] for k in ("launches", "bytes")}
    return out


def format_costs(costs: list[StepCost]) -> str:
    """A plain-text table of :func:`decode_step_costs` with totals."""
    lines = [f"{'path':<9}{'stage':<40}{'launches':>9}{'bytes':>14}", "-" * 72]
    lines += [f"{c.path:<9}{c.stage:<40}{c.launches:>9}{c.bytes:>14,}" for c in costs]
    totals = summarize_costs(costs)
    lines.append("-" * 72)
    for path in ("unfused", "fused", "saved"):
        lines.append(f"{path:<9}{'total' if path != 'saved' else 'by fusion':<40}"
                     f"{totals[path]['launches']:>9}{totals[path]['bytes']:>14,}")
    return "\n".join(lines)


__all__ = ["StepCost", "count_torch_ops", "decode_step_costs", "format_costs", "fused_decode_step",
           "reference_decode_step", "summarize_costs", "unfused_decode_step"]
