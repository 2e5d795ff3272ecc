"""How much KV-cache memory sits reserved but empty: max-length preallocation vs paging.

Over a request's life its cache grows from ``prompt_len`` to ``prompt_len + output_len``
tokens, one per decode step. At each step a cache *reserves* some slots and *uses* as many
as the request has tokens; the waste is the fraction of reserved slots holding nothing,
summed over every step of every request (a time average: a slot idle for 100 steps counts
100 times).

* **contiguous**: every request reserves ``max_len`` slots from its first step to its last
  (the whole context, because the cache cannot know how long the answer will be).
* **paged**: a request holding ``L`` tokens reserves ``ceil(L / block_size)`` blocks, so it
  wastes at most ``block_size - 1`` slots, in its last block.

Counted in tokens, so the result holds for any model: bytes are tokens × (2 · layers ·
KV heads · head_dim · itemsize). :class:`PagedStats` is the same accounting for a live
:class:`~labkit.kvcache.paged.PagedKVCache` (``cache.stats()``), with what prefix sharing saves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labkit.kvcache.workload import Request


@dataclass(frozen=True)
class PagedStats:
    """Where the pool's memory goes."""

    num_blocks: int  # blocks in the pool
    used_blocks: int  # blocks some sequence points at
    shared_blocks: int  # blocks two or more sequences point at
    table_blocks: int  # sum of every block table's length (what it would take with no sharing)
    tokens: int  # sum of every sequence's length
    block_size: int

    @property
    def waste(self) -> float:
        """Fraction of the used blocks' slots that hold no token (prefix sharing can make it negative)."""
        slots = self.used_blocks * self.block_size
        return 1.0 - self.tokens / slots if slots else 0.0

    @property
    def saved_by_sharing(self) -> int:
        """Blocks that forked sequences share instead of each holding a copy."""
        return self.table_blocks - self.used_blocks


@dataclass(frozen=True)
class WasteReport:
    """Reserved-but-empty fractions of both caches over one workload."""

    contiguous: float  # waste fraction of max-length preallocation
    paged: float  # waste fraction of the paged cache
    max_len: int  # slots each request reserves in the contiguous cache
    block_size: int  # tokens per block in the paged cache
    used: int  # token-steps holding a token (the same for both caches)
    contiguous_reserved: int  # token-steps reserved by the contiguous cache
    paged_reserved: int  # token-steps reserved by the paged cache

    @property
    def memory_ratio(self) -> float:
        """How many times more memory the contiguous cache reserves than the paged one."""
        return self.contiguous_reserved / self.paged_reserved

    def __str__(self) -> str:
        return (f"contiguous (max_len={self.max_len}): {100 * self.contiguous:.1f}% wasted;  "
                f"paged (block_size={self.block_size}): {100 * self.paged:.2f}% wasted;  "
                f"{self.memory_ratio:.1f}x less memory reserved")


def request_lengths(request: Request) -> np.ndarray:
    """Tokens the request's cache holds at each decode step: prompt + 1, ..., prompt + output."""
    return request.prompt_len + np.arange(1, request.output_len + 1)


def memory_waste(requests: list[Request], *, block_size: int = 16, max_len: int | None = None) -> WasteReport:
    """Waste of max-length preallocation and of a paged cache with ``block_size`` on ``requests``.

    ``max_len`` defaults to the longest request (prompt + output): the least any max-length
    preallocator that serves the whole workload must reserve, so the contiguous figure is a
    lower bound. A request longer than ``max_len`` raises ``ValueError``.
    """
    if not requests:
        raise ValueError("requests is empty")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    longest = max(r.total_len for r in requests)
    max_len = longest if max_len is None else max_len
    if longest > max_len:
        raise ValueError(f"a request holds {longest} tokens, more than max_len={max_len}")
    lengths = np.concatenate([request_lengths(r) for r in requests])
    used = int(lengths.sum())
    contiguous = max_len * len(lengths)
    paged = int((-(-lengths // block_size) * block_size).sum())
    return WasteReport(1 - used / contiguous, 1 - used / paged, max_len, block_size, used, contiguous, paged)
