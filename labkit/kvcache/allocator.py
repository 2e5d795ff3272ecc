"""A block allocator: the memory manager under the paged KV cache.

The pool holds ``num_blocks`` fixed-size blocks, numbered ``0 .. num_blocks - 1``. The
allocator owns no tensors, only bookkeeping:

* a **free list** (a stack: the block freed last is handed out first, so hot blocks stay hot);
* a **reference count** per block: how many block tables point at it. Forking a sequence
  shares its blocks (count + 1 each) instead of copying them; a block goes back on the free
  list when its last owner lets go (count reaches 0).

Misuse raises at once, naming the block: handing back a block that is already free
(:class:`DoubleFree`) or sharing one nobody owns. Running out raises :class:`OutOfBlocks`,
which a scheduler catches to preempt or wait; an allocation that fails changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


class OutOfBlocks(RuntimeError):
    """Not enough free blocks for a request. Nothing was allocated; preempt a sequence or wait."""

    def __init__(self, requested: int, free: int, total: int):
        super().__init__(f"asked for {requested} block(s) but only {free} of {total} are free")
        self.requested, self.free, self.total = requested, free, total


class DoubleFree(ValueError):
    """A block was handed back that is already free (its reference count is 0)."""


@dataclass(frozen=True)
class AllocatorStats:
    """A snapshot of the pool: every block is either free or used (``free + used == num_blocks``)."""

    num_blocks: int  # blocks in the pool
    used: int  # blocks with reference count >= 1
    free: int  # blocks on the free list
    shared: int  # used blocks with reference count >= 2 (prefix sharing)

    @property
    def used_fraction(self) -> float:
        return self.used / self.num_blocks


class BlockAllocator:
    """Hands out block ids from a pool of ``num_blocks``, with reference counts.

    ``allocate(n)`` returns ``n`` distinct free blocks, each with count 1; ``share(b)`` adds
    an owner to a used block; ``free(b)`` removes one owner and returns the block to the
    free list when none is left.
    """

    def __init__(self, num_blocks: int):
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_blocks must be a positive int, got {num_blocks!r}")
        self.num_blocks = num_blocks
        # Reversed so that block 0 is handed out first: a fresh pool fills in order.
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._refs: list[int] = [0] * num_blocks

    def _check_id(self, block: int) -> None:
        if not isinstance(block, int) or not 0 <= block < self.num_blocks:
            raise ValueError(f"block must be an int in [0, {self.num_blocks}), got {block!r}")

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def can_allocate(self, n: int) -> bool:
        """Whether ``allocate(n)`` would succeed now."""
        return 0 <= n <= len(self._free)

    def allocate(self, n: int = 1) -> list[int]:
        """``n`` distinct free blocks, each now with reference count 1.

        Raises :class:`OutOfBlocks` (allocating nothing) when fewer than ``n`` are free.
        """
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if n > len(self._free):
            raise OutOfBlocks(n, len(self._free), self.num_blocks)
        blocks = [self._free.pop() for _ in range(n)]
        for b in blocks:
            self._refs[b] = 1
        return blocks

    def share(self, block: int) -> None:
        """Add an owner to a used block (a forked sequence now points at it too)."""
        self._check_id(block)
        if self._refs[block] == 0:
            raise ValueError(f"block {block} is free; only a used block can be shared")
        self._refs[block] += 1

    def free(self, block: int) -> bool:
        """Remove one owner of ``block``; return True if that was the last (the block is free again).

        Raises :class:`DoubleFree` if the block is already free.
        """
        self._check_id(block)
        if self._refs[block] == 0:
            raise DoubleFree(f"block {block} is already free (freed twice?)")
        self._refs[block] -= 1
        if self._refs[block] == 0:
            self._free.append(block)
            return True
        return False

    def refcount(self, block: int) -> int:
        """How many owners ``block`` has (0: free)."""
        self._check_id(block)
        return self._refs[block]

    def refcounts(self) -> list[int]:
        """Every block's reference count, indexed by block id (a copy)."""
        return list(self._refs)

    def free_blocks(self) -> list[int]:
        """The free list, next-to-be-allocated last (a copy)."""
        return list(self._free)

    def stats(self) -> AllocatorStats:
        used = self.num_blocks - len(self._free)
        return AllocatorStats(self.num_blocks, used, len(self._free), sum(r >= 2 for r in self._refs))

    def __repr__(self) -> str:
        s = self.stats()
        return f"BlockAllocator({s.num_blocks} blocks: {s.used} used, {s.free} free, {s.shared} shared)"
