"""A batch of a paged cache's sequences behind the model's cache protocol.

:class:`PagedBatch` implements :class:`labkit.kvcache.base.KVCache` over a
:class:`~labkit.kvcache.paged.PagedKVCache`, so the model (and the serving engine, which
builds one batch per scheduler step from the sequences it runs) works over a paged cache
unchanged. Decode steps use the paged Triton kernel; prefill and verify passes gather the
rows' K/V through the block tables and call SDPA.
"""

from __future__ import annotations

import math

import torch

from labkit.attention import masked_attention
from labkit.kvcache.allocator import OutOfBlocks
from labkit.kvcache.base import KVCache, as_length_list
from labkit.kvcache.paged import PagedKVCache


class PagedBatch(KVCache):
    """Sequences of a :class:`PagedKVCache` as rows of a batch, behind the model's cache protocol.

    ``begin(S)`` extends every row by ``S`` tokens (allocating blocks, copy-on-write) and
    ``append`` writes them; ``attend`` runs the paged Triton kernel for decode steps (S = 1)
    and, for prefill and verify passes (S > 1), gathers the rows' K/V and calls SDPA with a
    causal mask. ``impl="sdpa"`` uses the gather + SDPA path for every pass.

    max_len: the most tokens a row may hold (``begin`` raises ``ValueError`` past it); it fixes
    the width of :attr:`block_tables`. static_shapes (needs max_len): every pass with the same
    ``S`` has the same tensor shapes and reads only tensors updated in place (block tables,
    slots, lengths), so it can be captured in a CUDA graph (``labkit.decoding.graphs``).
    """

    def __init__(self, cache: PagedKVCache, seqs, *, impl: str = "paged", max_len: int | None = None,
                 static_shapes: bool = False):
        if impl not in ("paged", "sdpa"):
            raise ValueError(f"impl must be 'paged' or 'sdpa', got {impl!r}")
        if static_shapes and max_len is None:
            raise ValueError("static_shapes=True needs max_len (it fixes the block tables' width)")
        self.cache, self.seqs, self.impl = cache, list(seqs), impl
        if not self.seqs or len(set(self.seqs)) != len(self.seqs):
            raise ValueError(f"a batch needs one or more distinct sequences, got {self.seqs}")
        self.num_layers, self.batch_size = cache.num_layers, len(self.seqs)
        self.num_kv_heads, self.head_dim = cache.num_kv_heads, cache.head_dim
        self.dtype, self.device = cache.dtype, cache.device
        self.max_len, self.static_shapes = max_len, static_shapes
        self._host = [cache.length(s) for s in self.seqs]
        if max_len is not None and max(self._host) > max_len:
            raise ValueError(f"a row already holds {max(self._host)} tokens, more than max_len={max_len}")
        self.lengths = torch.tensor(self._host, dtype=torch.int32, device=self.device)
        width = math.ceil(max_len / cache.block_size) if max_len else 1
        self.block_tables = torch.zeros(self.batch_size, width, dtype=torch.int32, device=self.device)
        self._update_tables()
        self._pending = 0
        self._slots: dict[int, torch.Tensor] = {}  # S -> [B, S] slots of a pass's new tokens

    @classmethod
    def create(cls, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int, max_len: int, *,
               block_size: int = 16, num_blocks: int | None = None, dtype: torch.dtype = torch.float32,
               device=None, impl: str = "paged", static_shapes: bool = False) -> "PagedBatch":
        """A fresh pool with ``batch_size`` empty sequences: a drop-in for ``ContiguousKVCache``'s
        arguments. ``num_blocks`` defaults to enough for every row to reach ``max_len``."""
        num_blocks = num_blocks or batch_size * math.ceil(max_len / block_size)
        cache = PagedKVCache(num_layers, num_kv_heads, head_dim, num_blocks=num_blocks, block_size=block_size,
                             dtype=dtype, device=device)
        return cls(cache, [cache.new_sequence() for _ in range(batch_size)], impl=impl, max_len=max_len,
                   static_shapes=static_shapes)

    def _update_tables(self) -> None:
        """Copy the rows' block tables into :attr:`block_tables`, in place (grown only without max_len)."""
        rows = [self.cache.block_table(s) for s in self.seqs]
        width = max(max(len(r) for r in rows), self.block_tables.shape[1])
        host = torch.zeros(self.batch_size, width, dtype=torch.int32)
        for i, r in enumerate(rows):
            host[i, : len(r)] = torch.tensor(r, dtype=torch.int32)
        if width > self.block_tables.shape[1]:
            self.block_tables = torch.zeros_like(host, device=self.device)
        self.block_tables.copy_(host)

    def begin(self, num_new: int) -> torch.Tensor:
        if not isinstance(num_new, int) or num_new < 1:
            raise ValueError(f"num_new must be a positive int, got {num_new!r}")
        if self._pending:
            raise RuntimeError("begin() twice without commit(): a pass is already in progress")
        for s, n in zip(self.seqs, self._host):
            if self.cache.length(s) != n:
                raise RuntimeError(f"sequence {s} changed outside this batch ({self.cache.length(s)} tokens, "
                                   f"the batch expected {n})")
        if self.max_len is not None and max(self._host) + num_new > self.max_len:
            raise ValueError(f"the batch holds at most max_len={self.max_len} tokens per row; a row at "
                             f"{max(self._host)} tokens can't take {num_new} more")
        need = sum(self.cache.blocks_needed(s, num_new) for s in self.seqs)
        if not self.cache.allocator.can_allocate(need):
            raise OutOfBlocks(need, self.cache.allocator.num_free, self.cache.num_blocks)
        slots = torch.stack([self.cache.extend(s, num_new) for s in self.seqs])
        if num_new not in self._slots:
            self._slots[num_new] = torch.empty_like(slots)
        self._slots[num_new].copy_(slots)
        self._update_tables()
        self._pending = num_new
        return self.lengths.long()[:, None] + torch.arange(num_new, device=self.device)[None, :]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        S = self._pending
        want = (self.batch_size, self.num_kv_heads, S, self.head_dim)
        if not S:
            raise RuntimeError("append() outside a pass: call begin() first")
        if tuple(k.shape) != want or tuple(v.shape) != want:
            raise ValueError(f"k and v must have shape {list(want)} [B, Hkv, S, D], got "
                             f"{list(k.shape)} and {list(v.shape)}")
        # [B, Hkv, S, D] -> [B*S, Hkv, D], in the order of the [B, S] slots.
        self.cache.write(layer, self._slots[S].reshape(-1), k.transpose(1, 2).reshape(-1, *want[1::2]),
                         v.transpose(1, 2).reshape(-1, *want[1::2]))

    def attend(self, layer: int, q: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
        B, Hq, S, D = q.shape
        if (B, S, D) != (self.batch_size, self._pending, self.head_dim) or Hq % self.num_kv_heads:
            raise ValueError(f"q must have shape [{self.batch_size}, Hq, {self._pending}, {self.head_dim}] "
                             f"with Hq a multiple of {self.num_kv_heads}, got {list(q.shape)}")
        if S == 1 and self.impl == "paged":
            from labkit.kvcache.paged_attention import paged_decode

            out = paged_decode(q[:, :, 0].contiguous(), self.cache.k[layer], self.cache.v[layer],
                               self.block_tables, self.lengths + 1, scale=scale, check_values=False)
            return out.unsqueeze(2)
        bs = self.cache.block_size
        T = self.block_tables.shape[1] * bs if self.static_shapes else max(self._host) + S
        pos = torch.arange(T, device=self.device)
        block = self.block_tables[:, pos // bs].long()  # [B, T]; past a row's end: padding, masked below
        row = pos % bs
        k = self.cache.k[layer][block, :, row].transpose(1, 2)  # [B, T, Hkv, D] -> [B, Hkv, T, D]
        v = self.cache.v[layer][block, :, row].transpose(1, 2)
        query_pos = self.lengths.long()[:, None] + pos[None, :S]  # [B, S]
        mask = pos[None, None, :] <= query_pos[:, :, None]  # [B, S, T]
        scale = 1.0 / math.sqrt(D) if scale is None else scale
        return masked_attention(q, k, v, mask[:, None], scale=scale)

    def commit(self) -> None:
        if not self._pending:
            raise RuntimeError("commit() without begin(): no pass is in progress")
        self.lengths += self._pending
        self._host = [n + self._pending for n in self._host]
        self._pending = 0

    def truncate(self, lengths) -> None:
        new = as_length_list(lengths, self.batch_size)
        for b, (n, old) in enumerate(zip(new, self._host)):
            if not 0 <= n <= old:
                raise ValueError(f"row {b} holds {old} tokens; can't truncate it to {n}")
        for s, n in zip(self.seqs, new):
            self.cache.truncate(s, n)  # also drops a pass begun and not committed
        self._host = new
        self.lengths.copy_(torch.tensor(new, dtype=torch.int32), non_blocking=True)
        self._update_tables()
        self._pending = 0

    def host_lengths(self) -> list[int]:
        return list(self._host)

    def memory_bytes(self) -> int:
        """Bytes of the blocks this batch's rows point at (shared blocks counted once)."""
        blocks = {b for s in self.seqs for b in self.cache.block_table(s)}
        return len(blocks) * self.cache.block_bytes()
