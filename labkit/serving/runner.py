"""The model runner: one engine step's work, run by the model over the paged KV cache.

The engine hands :meth:`PagedRunner.forward` a list of :class:`Work` items, one per scheduled
request: the tokens it must run this step (one for a decode, a chunk of a prompt for a
prefill) and where they start. The scheduler has already given every request the blocks
those tokens go in (:class:`~labkit.serving.blocks.BlockLedger` over the pool's allocator),
so the runner only reads block tables; it never allocates.

A step is **one** forward pass over all its tokens packed into a single row ``[1, N]``, as
vLLM does: every linear layer and MLP runs once over the decodes and the prefill chunks
together. Attention too is one launch of the paged Triton kernel
(:func:`labkit.kvcache.paged_attention.paged_decode`) per layer, because causal attention of
a prefill chunk *is* decode attention, one query at a time: once the layer has written the
chunk's keys and values into the pool, the token at position ``p`` attends to positions
``0 .. p`` of its request, i.e. it is a decode query over a sequence of length ``p + 1``
through its request's block table. So :class:`PackedStep` gives every token of the row its
own (block table, length) and a mixed step costs the same kernel launches as a decode step.

The model is small, so a step is bound by launches and host work, not by FLOPs: all of a
step's index arithmetic is done with numpy in a few vectorised calls, the block tables live
in a host mirror updated only when a request gains blocks, and everything the device needs
(token ids, positions, pool addresses, tables, lengths, logits rows) goes over in **one**
pinned host-to-device copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch

from labkit.kvcache.base import KVCache
from labkit.serving.blocks import BlockLedger, blocks_for


@dataclass
class Work:
    """One request's share of a step: run ``tokens`` at positions ``start ..`` of its sequence."""

    request: object  # the Request (its block table is ``blocks.table(request)``)
    start: int  # tokens of the request already in the cache
    tokens: list  # the token ids to run now (at least one)
    wants_logits: bool  # True when the last of them is the request's last token: sample after it


class PackedStep(KVCache):
    """A step's N tokens as one packed row, behind the model's cache protocol.

    positions: [1, N] int64; block, row: [N] int64, where each new token's K/V goes in the pool;
    tables: [N, W] int32, the block table of each token's request; lengths: [N] int32, each
    token's position + 1 (the keys it attends to, itself included). All device tensors.
    """

    def __init__(self, cache, positions, block, row, tables, lengths):
        self.cache, self.num_layers, self.batch_size = cache, cache.num_layers, 1
        self.num_kv_heads, self.head_dim, self.dtype = cache.num_kv_heads, cache.head_dim, cache.dtype
        self.device, self.N = cache.device, positions.shape[1]
        self.positions, self.block, self.row = positions, block, row
        self.tables, self.token_lengths = tables, lengths

    @property
    def lengths(self) -> torch.Tensor:  # the protocol's: one packed row (made only if asked: the model never does)
        return torch.zeros(1, dtype=torch.int32, device=self.device)

    def begin(self, num_new: int) -> torch.Tensor:
        if num_new != self.N:
            raise ValueError(f"this step packs {self.N} tokens, got begin({num_new})")
        return self.positions

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        # k, v: [1, Hkv, N, D]. Advanced indices on dims 0 and 2 around a slice put their [N] dim
        # first: the pool is indexed [N, Hkv, D], so the source is k[0] as [N, Hkv, D].
        self.cache.k[layer][self.block, :, self.row] = k[0].transpose(0, 1)
        self.cache.v[layer][self.block, :, self.row] = v[0].transpose(0, 1)

    def attend(self, layer: int, q: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
        from labkit.kvcache.paged_attention import paged_decode

        qt = q[0].transpose(0, 1).contiguous()  # [N, Hq, D]: one decode query per token
        out = paged_decode(qt, self.cache.k[layer], self.cache.v[layer], self.tables, self.token_lengths,
                           scale=scale, check_values=False)
        return out.transpose(0, 1).unsqueeze(0)  # [1, Hq, N, D]

    def commit(self) -> None:
        pass  # the ledger already holds the step's tokens; nothing in the pool changes

    def truncate(self, lengths) -> None:
        raise NotImplementedError("a packed step is built for one pass; the engine never rolls it back")

    def host_lengths(self) -> list[int]:
        return [0]


class PagedRunner:
    """Runs a :class:`~labkit.model.Transformer` over a paged KV pool for the serving engine.

    num_blocks, block_size: the pool (K and V of every layer, in the model's dtype, on its
    device). max_context: most tokens per sequence (default and at most the model's max_len).
    Call :meth:`warmup` before timing anything: it compiles every kernel variant a step may need.
    """

    def __init__(self, model, *, num_blocks: int, block_size: int = 16, max_context: int | None = None):
        from labkit.kvcache.paged import PagedKVCache

        cfg, p = model.config, next(model.parameters())
        self.model, self.vocab_size = model, cfg.vocab_size
        self.max_context = min(cfg.max_len, max_context or cfg.max_len)
        self.cache = PagedKVCache(cfg.n_layers, cfg.kv_heads, cfg.head_dim, num_blocks=num_blocks,
                                  block_size=block_size, dtype=p.dtype, device=p.device)
        self.blocks = BlockLedger(block_size=block_size, allocator=self.cache.allocator, on_free=self._release)
        self.device = p.device
        # Host mirror of the running requests' block tables, one row each (fixed width: the
        # kernel's table stride never changes, so it is compiled once).
        self.width = blocks_for(self.max_context, block_size)
        self._mirror = np.zeros((0, self.width), dtype=np.int32)
        self._filled = np.zeros(0, dtype=np.int64)  # entries of each mirror row that hold the request's blocks
        self._rows: dict[object, int] = {}  # request_id -> mirror row
        self._spare: list[int] = []
        self._staging = torch.empty(0, dtype=torch.uint8)
        self._copied = None  # CUDA event: the last copy out of the staging buffer is done

    def memory_bytes(self) -> int:
        return self.cache.memory_bytes()

    def _release(self, request_id, blocks: list) -> None:
        row = self._rows.pop(request_id, None)  # its blocks go back: forget its mirror row
        if row is not None:
            self._filled[row] = 0
            self._spare.append(row)

    def _row(self, request) -> int:
        """The request's mirror row, brought up to date with the blocks it got since the last step."""
        rid = request.request_id
        row = self._rows.get(rid)
        if row is None:
            if not self._spare:  # grow the mirror (to twice as many rows)
                old, n = len(self._filled), max(8, 2 * len(self._filled))
                self._mirror = np.concatenate([self._mirror, np.zeros((n - old, self.width), np.int32)])
                self._filled = np.concatenate([self._filled, np.zeros(n - old, np.int64)])
                self._spare = list(range(n - 1, old - 1, -1))
            row = self._rows[rid] = self._spare.pop()
        table, have = self.blocks.tables.get(rid, ()), int(self._filled[row])
        if len(table) > have:  # tables only grow while a request runs: copy the new entries only
            self._mirror[row, have:len(table)] = table[have:]
            self._filled[row] = len(table)
        return row

    def _stage(self, nbytes: int) -> np.ndarray:
        """The staging buffer (pinned on a GPU) as numpy bytes, once its last copy is done."""
        if self._copied is not None:
            self._copied.synchronize()
        if self._staging.numel() < nbytes:
            pin = self.device.type == "cuda"
            self._staging = torch.empty(max(nbytes, 2 * self._staging.numel()), dtype=torch.uint8, pin_memory=pin)
        return self._staging.numpy()

    @torch.inference_mode()
    def forward(self, work: list) -> torch.Tensor:
        """Run the step's work in one packed pass; return logits [n, V] (float32) for the items
        with ``wants_logits``, in the order of ``work``."""
        if not work:
            raise ValueError("forward needs at least one Work item")
        R, bs, W = len(work), self.blocks.block_size, self.width
        rows = np.fromiter((self._row(w.request) for w in work), np.int64, R)
        counts = np.fromiter((len(w.tokens) for w in work), np.int64, R)
        starts = np.fromiter((w.start for w in work), np.int64, R)
        ends = np.cumsum(counts)  # item i's tokens are ends[i] - counts[i] .. ends[i] - 1 of the row
        N = int(ends[-1])
        item = np.repeat(np.arange(R), counts)  # which work item each of the step's N tokens belongs to
        positions = np.arange(N) - np.repeat(ends - counts - starts, counts)
        tables, filled = self._mirror[rows[item]], self._filled[rows[item]]
        block_index = positions // bs
        if (block_index >= filled).any():
            i = int(np.argmax(block_index >= filled))
            raise RuntimeError(f"a token at position {int(positions[i])} is past its request's {int(filled[i])} "
                               f"block(s) of {bs}: the scheduler didn't give it the blocks for this step")
        logit_rows = ends[[i for i, w in enumerate(work) if w.wants_logits]] - 1
        # One staging buffer, one copy to the device, typed views of it: int64 tokens, positions,
        # pool block and row, logits rows; int32 lengths and tables. Every section starts on a
        # 16-byte boundary, as Triton assumes of the pointers it was compiled for.
        sizes = (N, N, N, N, len(logit_rows), N, N * W)
        offsets = np.cumsum([0] + [-(-n * (8 if k < 5 else 4) // 16) * 16 for k, n in enumerate(sizes)])
        buf = self._stage(int(offsets[-1]))
        host = [buf[offsets[k]:offsets[k + 1]].view(np.int64 if k < 5 else np.int32)[:n] for k, n in enumerate(sizes)]
        host[0][:] = np.fromiter(chain.from_iterable(w.tokens for w in work), np.int64, N)
        host[1][:] = positions
        host[2][:] = tables[np.arange(N), block_index]
        host[3][:] = positions % bs
        host[4][:] = logit_rows
        host[5][:] = positions + 1
        host[6][:] = tables.reshape(-1)
        dev = self._staging[:int(offsets[-1])].to(self.device, non_blocking=True, copy=True)
        if self.device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record()
        tokens, pos, block, row, rows_out, lengths, tab = (
            dev[offsets[k]:offsets[k + 1]].view(torch.int64 if k < 5 else torch.int32)[:n] for k, n in enumerate(sizes))
        step = PackedStep(self.cache, pos.view(1, N), block, row, tab.view(N, W), lengths)
        logits = self.model.forward_positions(tokens.view(1, N), step.positions, step)[0]  # [N, V]
        return logits.index_select(0, rows_out).float()  # [n, V]

    def warmup(self, max_tokens: int) -> None:
        """Run one pass of 1, 2, 3, 4, 6, 8, ... up to ``max_tokens`` tokens, so that every variant
        of the kernels a step of any size needs (the paged kernel's split count depends on the
        number of queries) is compiled before anything is timed. Leaves the pool as it was."""
        from labkit.serving.request import Request

        sizes, n = set(), 1.0
        while n < max_tokens:
            sizes.add(int(n))
            n = max(n + 1, n * 1.41)
        sizes.add(max_tokens)
        for i, n in enumerate(sorted(sizes)):
            n = min(n, self.max_context)
            request = Request([0] * n, 1, request_id=("warmup", i))
            self.blocks.ensure(request, n)
            try:
                self.forward([Work(request, 0, [0] * n, True)])
            finally:
                self.blocks.free(request)
