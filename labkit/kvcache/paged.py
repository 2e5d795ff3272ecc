"""The paged KV cache: one pool of fixed-size blocks shared by every sequence and layer.

Keys and values live in two tensors ``[num_layers, num_blocks, Hkv, block_size, D]``. A
sequence owns no memory of its own, only a **block table**: the list of blocks holding its
tokens, in order. Its token at position ``p`` sits in block ``table[p // block_size]`` at
row ``p % block_size``; numbering the pool's rows ``slot = block * block_size + row`` gives
every token one integer address (the *slot mapping*).

* Memory is handed out a block at a time as sequences grow, so a sequence wastes at most
  ``block_size - 1`` slots (its last block's tail) instead of ``max_len - length``.
* :meth:`PagedKVCache.fork` makes a sequence that shares its parent's blocks (reference count
  + 1 each): many samples of one prompt store the prompt once. A shared block is copied the
  first time one of its owners writes into it (*copy-on-write*); only a partially filled
  last block can ever be written, so that is the one copy.
* :class:`~labkit.kvcache.paged_batch.PagedBatch` is a batch of sequences seen through the
  model's cache protocol (:class:`labkit.kvcache.base.KVCache`): the model runs over a paged
  cache unchanged, and decode steps use the paged Triton kernel
  (:mod:`labkit.kvcache.paged_attention`).
"""

from __future__ import annotations

import math

import torch

from labkit import runtime
from labkit.kvcache.allocator import BlockAllocator, OutOfBlocks
from labkit.kvcache.waste import PagedStats


class UnknownSequence(LookupError):
    """A sequence id that was never created here, or was freed."""


class PagedKVCache:
    """A pool of ``num_blocks`` blocks of ``block_size`` tokens for K and V of ``num_layers`` layers.

    Sequences are named by the int ids :meth:`new_sequence` and :meth:`fork` return. Their
    tokens are added by :meth:`extend` (returns the new tokens' slots) and written per layer by
    :meth:`write`; :meth:`decode` runs paged decode attention over a batch of them.
    Errors: :class:`~labkit.kvcache.allocator.OutOfBlocks` when the pool runs out (nothing is
    changed), :class:`UnknownSequence` for a freed or unknown id.
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, *, num_blocks: int,
                 block_size: int = 16, dtype: torch.dtype = torch.float16, device=None):
        for name, value in (("num_layers", num_layers), ("num_kv_heads", num_kv_heads),
                            ("head_dim", head_dim), ("num_blocks", num_blocks), ("block_size", block_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {block_size}")
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.num_blocks, self.block_size, self.dtype = num_blocks, block_size, dtype
        self.device = torch.device(device) if device is not None else runtime.device()
        shape = (num_layers, num_blocks, num_kv_heads, block_size, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=dtype, device=self.device)
        self.allocator = BlockAllocator(num_blocks)
        self._tables: dict[int, list[int]] = {}
        self._lengths: dict[int, int] = {}
        self._freed: set[int] = set()
        self._next_id = 0

    # -- sequences -------------------------------------------------------------------------

    def _table(self, seq) -> list[int]:
        try:
            return self._tables[seq]
        except (KeyError, TypeError):
            why = "was freed" if seq in self._freed else "was never created in this cache"
            raise UnknownSequence(f"sequence {seq!r} {why}") from None

    def new_sequence(self, seq=None):
        """A new, empty sequence; returns its id. Allocates nothing until it grows.

        ``seq``: the id to use (any hashable, e.g. a request id; a freed id may be reused),
        or ``None`` for the next free int.
        """
        if seq is None:
            while self._next_id in self._tables or self._next_id in self._freed:
                self._next_id += 1
            seq = self._next_id
        elif seq in self._tables:
            raise ValueError(f"sequence {seq!r} already exists")
        self._freed.discard(seq)
        self._tables[seq], self._lengths[seq] = [], 0
        return seq

    def fork(self, parent, child=None):
        """A new sequence (id ``child``, or the next free int) holding the same tokens as
        ``parent``, sharing its blocks (no copy)."""
        table = self._table(parent)
        child = self.new_sequence(child)
        for block in table:
            self.allocator.share(block)
        self._tables[child], self._lengths[child] = list(table), self._lengths[parent]
        return child

    def free(self, seq) -> None:
        """Drop a sequence: each of its blocks loses an owner (and is free when it has none left)."""
        for block in self._table(seq):
            self.allocator.free(block)
        del self._tables[seq], self._lengths[seq]
        self._freed.add(seq)

    def sequences(self) -> list:
        return list(self._tables)

    def length(self, seq) -> int:
        self._table(seq)
        return self._lengths[seq]

    def block_table(self, seq) -> list[int]:
        """The blocks holding ``seq``'s tokens, in order (a copy)."""
        return list(self._table(seq))

    # -- growing and shrinking -------------------------------------------------------------

    def blocks_needed(self, seq, n: int) -> int:
        """How many blocks :meth:`extend` (seq, n) would allocate: new ones plus a copy-on-write."""
        table, length, bs = self._table(seq), self._lengths[seq], self.block_size
        new = math.ceil((length + n) / bs) - len(table)
        cow = n > 0 and length % bs != 0 and self.allocator.refcount(table[-1]) > 1
        return new + int(cow)

    def extend(self, seq, n: int) -> torch.Tensor:
        """Make room for ``n`` more tokens of ``seq``; return their slots, int64 [n] on the device.

        Allocates the blocks they need, and first copies a shared, partially filled last block
        (copy-on-write) so that writing the new tokens can't change another sequence. Raises
        :class:`OutOfBlocks` (changing nothing) if the pool can't hold them.
        """
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        need = self.blocks_needed(seq, n)
        if not self.allocator.can_allocate(need):
            raise OutOfBlocks(need, self.allocator.num_free, self.num_blocks)
        table, length, bs = self._tables[seq], self._lengths[seq], self.block_size
        if n > 0 and length % bs != 0 and self.allocator.refcount(table[-1]) > 1:
            table[-1] = self._copy_block(table[-1])
        table.extend(self.allocator.allocate(math.ceil((length + n) / bs) - len(table)))
        self._lengths[seq] = length + n
        return self.slots(seq, torch.arange(length, length + n))

    def _copy_block(self, old: int) -> int:
        new = self.allocator.allocate(1)[0]
        self.k[:, new] = self.k[:, old]
        self.v[:, new] = self.v[:, old]
        self.allocator.free(old)  # one owner fewer; the others keep the original
        return new

    def truncate(self, seq, n: int) -> None:
        """Keep the first ``n`` tokens of ``seq``; blocks past them lose this owner."""
        table, length = self._table(seq), self._lengths[seq]
        if not isinstance(n, int) or not 0 <= n <= length:
            raise ValueError(f"sequence {seq} holds {length} tokens; can't truncate it to {n!r}")
        keep = math.ceil(n / self.block_size)
        for block in table[keep:]:
            self.allocator.free(block)
        del table[keep:]
        self._lengths[seq] = n

    # -- addressing, writing, reading ------------------------------------------------------

    def slots(self, seq, positions) -> torch.Tensor:
        """Slots (``block * block_size + row``) of token ``positions`` of ``seq``: int64, on the device."""
        table = torch.tensor(self._table(seq), dtype=torch.long)
        pos = torch.as_tensor(positions, dtype=torch.long).cpu()
        if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= self._lengths[seq]):
            raise ValueError(f"positions must be in [0, {self._lengths[seq]}) for sequence {seq}")
        return (table[pos // self.block_size] * self.block_size + pos % self.block_size).to(self.device)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, rope=None) -> None:
        """Store keys and values k, v: [n, Hkv, D] of layer ``layer`` at ``slots`` (int64 [n]).

        One launch of :func:`labkit.rope.write.write_kv_rope`, which addresses the pool as
        ``[block, head, row, :]``; ``rope=(cos, sin, positions)`` rotates the keys on the way in.
        """
        from labkit.rope.write import write_kv_rope

        want = (slots.shape[0], self.num_kv_heads, self.head_dim)
        if tuple(k.shape) != want or tuple(v.shape) != want:
            raise ValueError(f"k and v must have shape {list(want)} [n, Hkv, D], got {list(k.shape)} and {list(v.shape)}")
        if k.dtype != self.dtype or v.dtype != self.dtype:
            raise TypeError(f"k and v must have the cache's dtype {self.dtype}, got {k.dtype} and {v.dtype}")
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be in [0, {self.num_layers}), got {layer}")
        if k.stride() != v.stride():  # e.g. a rotated k beside v sliced from qkv: the kernel takes one set
            k, v = k.contiguous(), v.contiguous()
        write_kv_rope(k, v, self.k[layer], self.v[layer], slots // self.block_size, slots % self.block_size,
                      rope, check_indices=False)

    def gather(self, layer: int, seq) -> tuple[torch.Tensor, torch.Tensor]:
        """``seq``'s keys and values of ``layer`` as contiguous [Hkv, T, D] copies (for checks)."""
        slots = self.slots(seq, torch.arange(self.length(seq)))
        block, row = slots // self.block_size, slots % self.block_size
        return (self.k[layer][block, :, row].transpose(0, 1).contiguous(),
                self.v[layer][block, :, row].transpose(0, 1).contiguous())

    def tables(self, seqs, *, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Block tables [B, width] int32 (padded with 0) and lengths [B] int32 of ``seqs``, on the device."""
        rows = [self._table(s) for s in seqs]
        width = max(1, max(len(r) for r in rows)) if width is None else width
        if any(len(r) > width for r in rows):
            raise ValueError(f"a block table is longer than width={width}")
        table = torch.zeros(len(rows), width, dtype=torch.int32)
        for i, r in enumerate(rows):
            table[i, : len(r)] = torch.tensor(r, dtype=torch.int32)
        lengths = torch.tensor([self._lengths[s] for s in seqs], dtype=torch.int32)
        return table.to(self.device), lengths.to(self.device)

    def decode(self, layer: int, q: torch.Tensor, seqs, *, scale: float | None = None) -> torch.Tensor:
        """Decode attention of q [B, Hq, D] over the tokens of ``seqs`` (B ids, each length >= 1)."""
        from labkit.kvcache.paged_attention import paged_decode  # imports triton: only when needed

        empty = [s for s in seqs if self.length(s) == 0]
        if empty:
            raise ValueError(f"sequences {empty} hold no tokens: decode attention needs at least one")
        table, lengths = self.tables(seqs)
        return paged_decode(q, self.k[layer], self.v[layer], table, lengths, scale=scale, check_values=False)

    # -- accounting ------------------------------------------------------------------------

    def stats(self) -> PagedStats:
        a = self.allocator.stats()
        return PagedStats(self.num_blocks, a.used, a.shared, sum(len(t) for t in self._tables.values()),
                          sum(self._lengths.values()), self.block_size)

    def block_bytes(self) -> int:
        """Bytes of one block, K and V of every layer."""
        return 2 * self.num_layers * self.num_kv_heads * self.block_size * self.head_dim * self.k.element_size()

    def memory_bytes(self) -> int:
        """Bytes of the whole pool."""
        return self.num_blocks * self.block_bytes()

    def check_invariants(self) -> None:
        """Raise ``AssertionError`` unless the bookkeeping is exact: every block's reference count
        equals the number of block tables pointing at it, the free list holds exactly the blocks
        with count 0 (no leak, no double ownership), and each table fits its sequence's length."""
        owners = [0] * self.num_blocks
        for seq, table in self._tables.items():
            want = math.ceil(self._lengths[seq] / self.block_size)
            assert len(table) == want, f"sequence {seq}: {len(table)} blocks for {self._lengths[seq]} tokens (want {want})"
            for block in table:
                owners[block] += 1
        refs = self.allocator.refcounts()
        bad = [b for b in range(self.num_blocks) if refs[b] != owners[b]]
        assert not bad, (f"reference counts differ from owners at blocks {bad[:8]}: "
                         f"counts {[refs[b] for b in bad[:8]]}, owners {[owners[b] for b in bad[:8]]}")
        free = self.allocator.free_blocks()
        assert len(set(free)) == len(free), "a block is on the free list twice"
        assert sorted(free) == [b for b in range(self.num_blocks) if owners[b] == 0], \
            "the free list is not exactly the blocks nobody owns"

    def __repr__(self) -> str:
        s = self.stats()
        return (f"PagedKVCache({len(self._tables)} sequences, {s.tokens} tokens in {s.used_blocks}/{s.num_blocks} "
                f"blocks of {self.block_size}, {s.shared_blocks} shared)")
