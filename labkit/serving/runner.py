"""The model runner: one engine step's work, run by the model over the paged KV cache.

The engine hands :meth:`PagedRunner.forward` a list of :class:`Work` items, one per scheduled
request: the tokens it must run this step (one for a decode, a chunk of a prompt for a
prefill) and where they start. The scheduler has already given every request the blocks
those tokens go in (:class:`~labkit.serving.blocks.BlockLedger` over the pool's allocator),
so the runner only reads the block tables; it never allocates.

A step runs at most two forward passes of the model:

* all single-token items (the decodes) as one batch ``[B, 1]``: attention through the paged
  Triton kernel (:func:`labkit.kvcache.paged_attention.paged_decode`);
* all longer items (prefill chunks) as one batch, right-padded to the longest chunk:
  attention gathers each row's cached keys and values and runs SDPA with a causal mask.

Both passes see the pool through :class:`StepBatch`, the model's cache protocol
(:class:`labkit.kvcache.base.KVCache`) over rows whose cached lengths and numbers of new
tokens all differ. Padding tokens are never written to the cache and their outputs are
dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from labkit.kvcache.base import KVCache
from labkit.serving.blocks import BlockLedger


@dataclass
class Work:
    """One request's share of a step: run ``tokens`` at positions ``start ..`` of its sequence."""

    request: object  # the Request (its block table is ``blocks.table(request)``)
    start: int  # tokens of the request already in the cache
    tokens: list  # the token ids to run now (at least one)
    wants_logits: bool  # True when the last of them is the request's last token: sample after it


class StepBatch(KVCache):
    """Rows of the paged pool as one batch of the cache protocol, each with its own new-token count.

    tables: per row, its block ids (covering ``starts[b] + counts[b]`` tokens); starts: tokens
    cached per row before this pass; counts: new tokens per row (the pass runs
    ``S = max(counts)``, shorter rows right-padded). The blocks are already allocated, so
    :meth:`begin` only computes slots and :meth:`commit` changes nothing in the pool.
    """

    def __init__(self, cache, tables: list, starts: list, counts: list):
        self.cache, self.num_layers = cache, cache.num_layers
        self.batch_size, self.num_kv_heads, self.head_dim = len(tables), cache.num_kv_heads, cache.head_dim
        self.dtype, self.device, self.bs = cache.dtype, cache.device, cache.block_size
        self.S = max(counts)
        width = max(1, math.ceil((max(s + self.S for s in starts)) / self.bs))
        rows = torch.zeros(len(tables), width, dtype=torch.int32)  # past a row's blocks: block 0, never read
        for b, t in enumerate(tables):
            rows[b, : len(t)] = torch.tensor(t, dtype=torch.int32)
        self.block_tables = rows.to(self.device, non_blocking=True)
        self._host = list(starts)
        self.lengths = torch.tensor(starts, dtype=torch.int32).to(self.device, non_blocking=True)
        # The real (unpadded) tokens, flattened in [B, S] order, and the pool slots they go to.
        real = [(b, i) for b, n in enumerate(counts) for i in range(n)]
        flat = [b * self.S + i for b, i in real]
        slots = [tables[b][(starts[b] + i) // self.bs] * self.bs + (starts[b] + i) % self.bs for b, i in real]
        self._flat = torch.tensor(flat, dtype=torch.long).to(self.device, non_blocking=True)
        self._slots = torch.tensor(slots, dtype=torch.long).to(self.device, non_blocking=True)
        self._padded = len(real) != len(tables) * self.S
        self._pending = 0

    def begin(self, num_new: int) -> torch.Tensor:
        if num_new != self.S:
            raise ValueError(f"this step batch runs S={self.S} tokens per row, got begin({num_new})")
        self._pending = num_new
        return self.lengths.long()[:, None] + torch.arange(num_new, device=self.device)[None, :]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        shape = (-1, self.num_kv_heads, self.head_dim)
        k, v = k.transpose(1, 2).reshape(shape), v.transpose(1, 2).reshape(shape)  # [B*S, Hkv, D]
        if self._padded:
            k, v = k.index_select(0, self._flat), v.index_select(0, self._flat)
        self.cache.write(layer, self._slots, k, v)

    def attend(self, layer: int, q: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
        B, Hq, S, D = q.shape
        if S == 1:
            from labkit.kvcache.paged_attention import paged_decode

            out = paged_decode(q[:, :, 0].contiguous(), self.cache.k[layer], self.cache.v[layer],
                               self.block_tables, self.lengths + 1, scale=scale, check_values=False)
            return out.unsqueeze(2)
        T = max(self._host) + S
        pos = torch.arange(T, device=self.device)
        block = self.block_tables[:, pos // self.bs].long()  # [B, T]; padding reads block 0, masked below
        k = self.cache.k[layer][block, :, pos % self.bs].transpose(1, 2)  # [B, Hkv, T, D]
        v = self.cache.v[layer][block, :, pos % self.bs].transpose(1, 2)
        mask = pos[None, None, :] <= (self.lengths.long()[:, None] + pos[None, :S])[:, :, None]  # [B, S, T]
        if Hq != self.num_kv_heads:
            k = k.repeat_interleave(Hq // self.num_kv_heads, dim=1)
            v = v.repeat_interleave(Hq // self.num_kv_heads, dim=1)
        scale = 1.0 / math.sqrt(D) if scale is None else scale
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], scale=scale)

    def commit(self) -> None:
        self.lengths += self._pending  # the pool's bookkeeping (the ledger) already holds these tokens
        self._host = [n + self._pending for n in self._host]
        self._pending = 0

    def truncate(self, lengths) -> None:
        raise NotImplementedError("a step batch is built for one pass; the engine never rolls it back")

    def host_lengths(self) -> list[int]:
        return list(self._host)


class PagedRunner:
    """Runs a :class:`~labkit.model.Transformer` over a paged KV pool for the serving engine.

    num_blocks, block_size: the pool (K and V of every layer, in the model's dtype, on its
    device). max_context: most tokens per sequence (default and at most the model's max_len).
    """

    def __init__(self, model, *, num_blocks: int, block_size: int = 16, max_context: int | None = None):
        from labkit.kvcache.paged import PagedKVCache

        cfg, p = model.config, next(model.parameters())
        self.model, self.vocab_size = model, cfg.vocab_size
        self.max_context = min(cfg.max_len, max_context or cfg.max_len)
        self.cache = PagedKVCache(cfg.n_layers, cfg.kv_heads, cfg.head_dim, num_blocks=num_blocks,
                                  block_size=block_size, dtype=p.dtype, device=p.device)
        self.blocks = BlockLedger(block_size=block_size, allocator=self.cache.allocator)
        self.device = p.device

    def memory_bytes(self) -> int:
        return self.cache.memory_bytes()

    @torch.inference_mode()
    def forward(self, work: list) -> torch.Tensor:
        """Run the step's work; return logits [n, V] (float32) for the items with ``wants_logits``, in order."""
        out = [None] * len(work)
        singles = [i for i, w in enumerate(work) if len(w.tokens) == 1]
        chunks = [i for i, w in enumerate(work) if len(w.tokens) > 1]
        for group in (singles, chunks):
            if group:
                for i, row in zip(group, self._pass([work[i] for i in group])):
                    out[i] = row
        rows = [out[i] for i, w in enumerate(work) if w.wants_logits]
        if not rows:
            return torch.empty(0, self.vocab_size, device=self.device)
        return torch.stack(rows).float()

    def _pass(self, items: list) -> torch.Tensor:
        counts = [len(w.tokens) for w in items]
        S = max(counts)
        batch = StepBatch(self.cache, [self.blocks.table(w.request) for w in items],
                          [w.start for w in items], counts)
        tokens = torch.tensor([w.tokens + [0] * (S - len(w.tokens)) for w in items], dtype=torch.long)
        tokens = tokens.to(self.device, non_blocking=True)
        positions = batch.begin(S).clamp_(max=self.model.config.max_len - 1)  # padding may run past the end
        logits = self.model.forward_positions(tokens, positions, batch)  # [B, S, V]
        batch.commit()
        last = torch.tensor(counts, device=self.device) - 1
        return logits[torch.arange(len(items), device=self.device), last]  # [B, V]: each row's last real token
