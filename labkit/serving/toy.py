"""A toy model runner: the engine's interface without a transformer, for testing schedulers.

:class:`ToyRunner` keeps a "KV cache" of token ids in a pool of blocks ``[num_blocks,
block_size]`` and addresses it through the same block tables
(:class:`~labkit.serving.blocks.BlockLedger`) as the real runner. Its next token is a hash
of the *whole* context as read back through the block table, so any scheduling mistake shows
up as a different output: a chunk run twice or skipped, a token written to a block the
request doesn't own, a preempted request resumed without recomputing its cache, a block
handed to two requests at once. Freed blocks are poisoned, so reading one is caught too.

It runs instantly, which makes it the engine to think about schedules with: on the logical
clock (one step, one unit) its timeline is the real engine's timeline.
"""

from __future__ import annotations

import torch

from labkit.serving.blocks import BlockLedger

POISON = -1


class ToyRunner:
    """A deterministic stand-in for :class:`~labkit.serving.runner.PagedRunner`.

    ``forward`` returns logits [n, vocab_size] whose argmax is a hash of the request's
    context (greedy outputs are a pure function of the prompt) and whose softmax is spread
    enough to sample from.
    """

    def __init__(self, *, num_blocks: int, block_size: int = 4, vocab_size: int = 97, max_context: int = 256):
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
        self.vocab_size, self.max_context = vocab_size, max_context
        self.blocks = BlockLedger(num_blocks, block_size, on_free=self._poison)
        self.pool = torch.full((num_blocks, block_size), POISON, dtype=torch.long)
        self.device = torch.device("cpu")
        self.passes = 0  # forward passes run (one per step in which work was scheduled)
        self.tokens_run = 0  # tokens whose "KV" was computed, recomputations included

    def _poison(self, request_id, blocks: list) -> None:
        self.pool[blocks] = POISON

    def memory_bytes(self) -> int:
        return self.pool.numel() * self.pool.element_size()

    def _slot(self, table: list, pos: int, request) -> tuple[int, int]:
        bs = self.blocks.block_size
        if pos // bs >= len(table):
            raise RuntimeError(f"request {request.request_id!r}: position {pos} is past its {len(table)} "
                               f"block(s) of {bs}: the scheduler didn't give it the blocks for this step")
        return table[pos // bs], pos % bs

    def forward(self, work: list) -> torch.Tensor:
        self.passes += 1
        rows = []
        for w in work:
            table = self.blocks.table(w.request)
            for i, token in enumerate(w.tokens):
                self.pool[self._slot(table, w.start + i, w.request)] = token
            self.tokens_run += len(w.tokens)
            if w.wants_logits:
                context = [int(self.pool[self._slot(table, p, w.request)]) for p in range(w.start + len(w.tokens))]
                if POISON in context:
                    raise RuntimeError(f"request {w.request.request_id!r} read position {context.index(POISON)}, "
                                       f"which holds no token (never computed, or its block was freed)")
                rows.append(self.logits(context))
        if not rows:
            return torch.empty(0, self.vocab_size)
        return torch.stack(rows)

    def logits(self, context: list) -> torch.Tensor:
        """The toy model: logits over the vocabulary given the whole context (token ids)."""
        h = 0
        for t in context:  # a polynomial hash: every token, and its position, matters
            h = (h * 1_000_003 + t + 1) % (1 << 61)
        g = torch.Generator().manual_seed(h)
        logits = torch.randn(self.vocab_size, generator=g)
        logits[h % self.vocab_size] += 4.0  # a clear favourite: greedy is robust, sampling still varies
        return logits

    def generate(self, prompt: list, max_new_tokens: int) -> list:
        """The greedy output of ``prompt`` computed directly, without any cache or scheduler."""
        context, out = list(prompt), []
        for _ in range(max_new_tokens):
            token = int(self.logits(context).argmax())
            out.append(token)
            context.append(token)
        return out
