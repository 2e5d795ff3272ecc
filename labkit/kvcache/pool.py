"""A contiguous KV cache laid out as a paged pool: what the paged kernel reads, built from K or V.

Benchmarks, sanitizer targets and the 8-bit cache (notebook 08) all need the same layout: the
blocks of each sequence scattered over a pool, and the block table that finds them again.
"""

from __future__ import annotations

import math

import torch


def to_paged(k: torch.Tensor, block_size: int, *, tables: torch.Tensor | None = None, shuffle: bool = True,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy contiguous ``k`` [B, Hkv, T, D] into a pool [B * ceil(T / bs), Hkv, bs, D].

    Returns ``(pool, block_tables [B, ceil(T / bs)] int32)``. The blocks sit where ``tables``
    says (to lay out V as K was), else in random order with ``shuffle`` (a fragmented pool),
    else sequence by sequence. Rows past T in a sequence's last block are zero.
    """
    B, Hkv, T, D = k.shape
    nb = math.ceil(T / block_size)
    padded = torch.zeros(B, Hkv, nb * block_size, D, dtype=k.dtype, device=k.device)
    padded[:, :, :T] = k
    # [B, Hkv, nb, bs, D] -> logical blocks in sequence order [B * nb, Hkv, bs, D]
    logical = padded.view(B, Hkv, nb, block_size, D).transpose(1, 2).reshape(B * nb, Hkv, block_size, D)
    if tables is not None:
        order = tables.flatten().long().to(k.device)
    else:
        order = (torch.randperm(B * nb, generator=generator) if shuffle else torch.arange(B * nb)).to(k.device)
    pool = torch.empty(logical.shape, dtype=k.dtype, device=k.device)  # contiguous, whatever logical's strides
    pool[order] = logical
    return pool, order.view(B, nb).to(torch.int32)


__all__ = ["to_paged"]
