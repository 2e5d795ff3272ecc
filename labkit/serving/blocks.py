"""Which KV blocks each request holds: the scheduler's view of the paged cache's memory.

A :class:`BlockLedger` keeps one block table (a list of block ids) per request, on top of
the paged cache's :class:`~labkit.kvcache.allocator.BlockAllocator`. The scheduler only
ever asks three things of it:

* :meth:`needed`: how many more blocks a request must get to hold ``num_tokens`` tokens;
* :meth:`ensure`: get them, all or nothing: it raises
  :class:`~labkit.kvcache.allocator.OutOfBlocks` and changes nothing when the pool can't
  supply them (the scheduler catches it and preempts);
* :meth:`free`: give every block of a request back, the moment it finishes or is preempted.

A request's table only grows while it runs (tokens are appended, never removed), so
"holding ``num_tokens`` tokens" means holding ``ceil(num_tokens / block_size)`` blocks.
"""

from __future__ import annotations

from labkit.kvcache.allocator import BlockAllocator, OutOfBlocks

__all__ = ["BlockLedger", "OutOfBlocks", "blocks_for"]


def blocks_for(num_tokens: int, block_size: int) -> int:
    """Blocks needed to hold ``num_tokens`` tokens: ceil(num_tokens / block_size)."""
    return -(-num_tokens // block_size)


class BlockLedger:
    """Block tables of the requests that hold KV memory, over one allocator.

    Requests are keyed by ``request.request_id``. ``allocator`` defaults to a fresh
    :class:`BlockAllocator` of ``num_blocks``; pass the paged cache's own to share its pool.
    ``on_free(request_id, blocks)`` is called with a request's blocks just before they go back:
    a runner's cue to forget what it cached about the request's table (a preempted request
    comes back with new blocks), or to poison the freed memory.
    """

    def __init__(self, num_blocks: int | None = None, block_size: int = 16, *,
                 allocator: BlockAllocator | None = None, on_free=None):
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        if allocator is None:
            if num_blocks is None:
                raise ValueError("give num_blocks or an allocator")
            allocator = BlockAllocator(num_blocks)
        self.allocator, self.block_size = allocator, block_size
        self.on_free = on_free  # called with a request's id and block ids just before they are freed
        self.tables: dict[object, list[int]] = {}

    @property
    def num_blocks(self) -> int:
        return self.allocator.num_blocks

    @property
    def num_free(self) -> int:
        return self.allocator.num_free

    def held(self, request) -> int:
        """Blocks ``request`` holds now (0 if none)."""
        return len(self.tables.get(request.request_id, ()))

    def table(self, request) -> list[int]:
        """The request's block table: block ids in token order (a copy)."""
        return list(self.tables.get(request.request_id, ()))

    def needed(self, request, num_tokens: int) -> int:
        """New blocks ``request`` must get to hold ``num_tokens`` tokens (0 if it holds enough)."""
        return max(0, blocks_for(num_tokens, self.block_size) - self.held(request))

    def ensure(self, request, num_tokens: int) -> None:
        """Make ``request`` hold blocks for ``num_tokens`` tokens; raise OutOfBlocks, changing nothing, if it can't."""
        n = self.needed(request, num_tokens)
        if n:
            new = self.allocator.allocate(n)  # raises OutOfBlocks before taking anything
            self.tables.setdefault(request.request_id, []).extend(new)

    def free(self, request) -> int:
        """Give back every block ``request`` holds; return how many."""
        table = self.tables.pop(request.request_id, [])
        if table and self.on_free is not None:
            self.on_free(request.request_id, table)
        for b in table:
            self.allocator.free(b)
        return len(table)

    def num_used(self) -> int:
        return self.allocator.num_used

    def __repr__(self) -> str:
        return (f"BlockLedger({len(self.tables)} requests, {self.num_used()} of {self.num_blocks} blocks used, "
                f"block_size={self.block_size})")
