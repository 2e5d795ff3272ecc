"""The model runner: one engine step's work, run by the model over the paged KV cache.

The engine hands :meth:`PagedRunner.forward` a list of :class:`Work` items, one per scheduled
request: the tokens it must run this step (one for a decode, a chunk of a prompt for a
prefill) and where they start. The scheduler has already given every request the blocks
those tokens go in (:class:`~labkit.serving.blocks.BlockLedger` over the pool's allocator),
so the runner only reads block tables; it never allocates.

A step is **one** forward pass over all its tokens packed into a single row ``[1, N]``, as
vLLM does: every linear layer and MLP runs once over the decodes and the prefill chunks
together, so a step that admits a request costs little more than a pure decode step.
Attention is the only part that must tell the requests apart; :class:`PackedStep` (the
model's cache protocol, :class:`labkit.kvcache.base.KVCache`, over the packed row) splits it:

* the decode tokens (one per request) go through the paged Triton kernel
  (:func:`labkit.kvcache.paged_attention.paged_decode`), each over its own block table;
* the prefill chunks are unpacked into a padded batch, attend over their cached and new
  keys (gathered through their block tables) with SDPA and a causal mask, and are packed back.
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


class PackedStep(KVCache):
    """A step's tokens as one packed row: decodes first (one token each), then prefill chunks.

    tables: per item, its block ids (covering ``start + len(tokens)``); starts: tokens cached
    per item before the step; counts: new tokens per item, 1 for the first ``num_decodes``
    items and more for the rest. All host-side index arithmetic is done here, once, and moved
    to the device in two copies.
    """

    def __init__(self, cache, tables: list, starts: list, counts: list, num_decodes: int, logits_rows=()):
        self.cache, self.num_layers, self.batch_size = cache, cache.num_layers, 1
        self.num_kv_heads, self.head_dim, self.dtype = cache.num_kv_heads, cache.head_dim, cache.dtype
        self.device, bs = cache.device, cache.block_size
        self.N, self.nd = sum(counts), num_decodes
        pre = range(num_decodes, len(counts))
        self.bp = len(pre)  # prefill rows
        self.sp = max((counts[j] for j in pre), default=0)  # their padded length
        self.tp = max((starts[j] + counts[j] for j in pre), default=0)  # keys they attend over
        wd = max((len(tables[j]) for j in range(num_decodes)), default=1)
        wp = max(1, math.ceil(self.tp / bs))
        # int64: positions, pool block and row of each new token, the prefill pack/unpack indices,
        # logits rows. int32: tables, lengths.
        positions, blocks, rows, pad_index, unpad_index, offset = [], [], [], [], [], 0
        for j, (t, s, n) in enumerate(zip(tables, starts, counts)):
            positions += range(s, s + n)
            blocks += [t[p // bs] for p in range(s, s + n)]
            rows += [p % bs for p in range(s, s + n)]
            if j >= num_decodes:
                row = j - num_decodes
                pad_index += [offset + min(i, n - 1) for i in range(self.sp)]  # padding repeats the last token
                unpad_index += [row * self.sp + i for i in range(n)]
            offset += n
        dec_tables = [t + [0] * (wd - len(t)) for t in tables[:num_decodes]]
        pre_tables = [tables[j] + [0] * (wp - len(tables[j])) for j in pre]
        ints = torch.tensor(positions + blocks + rows + pad_index + unpad_index + list(logits_rows), dtype=torch.long)
        i32 = torch.tensor([x for t in dec_tables for x in t] + [starts[j] + 1 for j in range(num_decodes)]
                           + [x for t in pre_tables for x in t] + [starts[j] for j in pre], dtype=torch.int32)
        ints, i32 = ints.to(self.device, non_blocking=True), i32.to(self.device, non_blocking=True)
        N, nd, bp, sp = self.N, num_decodes, self.bp, self.sp
        o = 0
        self.positions = ints[o:o + N].view(1, N); o += N
        self.block, self.row = ints[o:o + N], ints[o + N:o + 2 * N]; o += 2 * N
        self.pad_index = ints[o:o + bp * sp]; o += bp * sp
        self.unpad_index = ints[o:o + N - nd]; o += N - nd
        self.logits_rows = ints[o:]
        o = 0
        self.dec_tables = i32[o:o + nd * wd].view(nd, wd); o += nd * wd
        self.dec_lengths = i32[o:o + nd]; o += nd  # keys per decode: cached + its new token
        self.pre_tables = i32[o:o + bp * wp].view(bp, wp); o += bp * wp
        self.pre_starts = i32[o:o + bp]
        self.lengths = torch.zeros(1, dtype=torch.int32, device=self.device)  # protocol only: one packed row
        self._host = [0]
        self._gather = None  # the prefill rows' key addresses and mask: the same for every layer

    def begin(self, num_new: int) -> torch.Tensor:
        if num_new != self.N:
            raise ValueError(f"this step packs {self.N} tokens, got begin({num_new})")
        return self.positions

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        # k, v: [1, Hkv, N, D] -> [N, Hkv, D], one pool slot per token (no padding in a packed row).
        # Advanced indices on dims 0 and 2 around a slice put their [N] dim first: [N, Hkv, D].
        self.cache.k[layer][self.block, :, self.row] = k[0].transpose(0, 1)
        self.cache.v[layer][self.block, :, self.row] = v[0].transpose(0, 1)

    def attend(self, layer: int, q: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
        qt = q[0].transpose(0, 1)  # [N, Hq, D]
        parts = []
        if self.nd:
            from labkit.kvcache.paged_attention import paged_decode

            parts.append(paged_decode(qt[: self.nd].contiguous(), self.cache.k[layer], self.cache.v[layer],
                                      self.dec_tables, self.dec_lengths, scale=scale, check_values=False))
        if self.bp:
            parts.append(self._prefill(layer, qt, scale))
        return torch.cat(parts).transpose(0, 1).unsqueeze(0) if len(parts) > 1 else \
            parts[0].transpose(0, 1).unsqueeze(0)

    def _prefill(self, layer: int, qt: torch.Tensor, scale: float | None) -> torch.Tensor:
        bp, sp, T, bs = self.bp, self.sp, self.tp, self.cache.block_size
        Hq, D = qt.shape[1], qt.shape[2]
        q = qt.index_select(0, self.pad_index).view(bp, sp, Hq, D).transpose(1, 2)  # [bp, Hq, sp, D]
        if self._gather is None:
            pos = torch.arange(T, device=self.device)
            block = self.pre_tables[:, pos // bs].long()  # [bp, T]; past a row's blocks: block 0, masked below
            query_pos = self.pre_starts.long()[:, None] + pos[None, :sp]  # [bp, sp]
            mask = pos[None, None, :] <= query_pos[:, :, None]  # [bp, sp, T]: causal over cached + new
            self._gather = block, pos % bs, mask[:, None]
        block, row, mask = self._gather
        k = self.cache.k[layer][block, :, row].transpose(1, 2)  # [bp, Hkv, T, D]
        v = self.cache.v[layer][block, :, row].transpose(1, 2)
        if Hq != self.num_kv_heads:
            k = k.repeat_interleave(Hq // self.num_kv_heads, dim=1)
            v = v.repeat_interleave(Hq // self.num_kv_heads, dim=1)
        scale = 1.0 / math.sqrt(D) if scale is None else scale
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # [bp, Hq, sp, D]
        return o.transpose(1, 2).reshape(bp * sp, Hq, D).index_select(0, self.unpad_index)

    def commit(self) -> None:
        pass  # the ledger already holds the step's tokens; nothing in the pool changes

    def truncate(self, lengths) -> None:
        raise NotImplementedError("a packed step is built for one pass; the engine never rolls it back")

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
        """Run the step's work in one packed pass; return logits [n, V] (float32) for the items
        with ``wants_logits``, in the order of ``work``."""
        order = sorted(range(len(work)), key=lambda i: len(work[i].tokens) > 1)  # decodes first, stable
        items = [work[i] for i in order]
        counts = [len(w.tokens) for w in items]
        ends, total = {}, 0
        for i, n in zip(order, counts):
            total += n
            ends[i] = total - 1  # item i's last token in the packed row
        rows = [ends[i] for i, w in enumerate(work) if w.wants_logits]
        step = PackedStep(self.cache, [self.blocks.table(w.request) for w in items], [w.start for w in items],
                          counts, num_decodes=sum(n == 1 for n in counts), logits_rows=rows)
        tokens = torch.tensor([t for w in items for t in w.tokens], dtype=torch.long)
        tokens = tokens.to(self.device, non_blocking=True).view(1, -1)
        logits = self.model.forward_positions(tokens, step.begin(step.N), step)[0]  # [N, V]
        return logits.index_select(0, step.logits_rows).float()  # [n, V]
