"""CUDA graphs for the decode loop's fixed-shape forward passes.

A small model at batch 1 is launch-bound: a 12-layer step is a couple of hundred tiny
kernels, and launching them from Python costs more than running them. Capturing one pass
(``S`` new tokens) in a CUDA graph turns those launches into one replay. Everything the
pass reads that changes from step to step lives in tensors updated in place: the input
tokens (copied into a static buffer) and the cache's ``lengths``; the cache must be built
with ``static_shapes=True`` so attention always spans the same ``max_len`` slots.
"""

from __future__ import annotations

import torch


def capture(fn, *, warmup=None, warmups: int = 2, before=None):
    """``(graph, result)``: ``fn()`` captured in a CUDA graph, and what the captured call returned.

    ``warmup`` (default ``fn``) runs ``warmups`` times on a side stream first, outside the
    capture: cuBLAS workspaces and lazy initialisations must not happen inside it. ``before``
    runs last, outside the capture (host bookkeeping the captured call relies on).
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(warmups):
            (warmup or fn)()
    torch.cuda.current_stream().wait_stream(side)
    if before is not None:
        before()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        result = fn()
    return graph, result


class Replay:
    """``fn()`` replayed from a CUDA graph (:func:`capture`, two warm-up calls), or called eagerly.

    For a whole fixed-shape pass or round whose inputs live in tensors updated in place; the
    caller resets any state the warm-up calls changed before the first replay.
    """

    def __init__(self, fn, graph: bool):
        self.fn = fn
        self.graph = capture(fn)[0] if graph else None

    def __call__(self):
        if self.graph is not None:
            self.graph.replay()
        else:
            with torch.no_grad():
                self.fn()


class Step:
    """``step(tokens [B, S]) -> logits [B, S', V]``: one cached forward pass, eager or replayed.

    last_only: logits for the last position only (S' = 1). Behaves exactly like
    ``model(tokens, cache, last_only=last_only)``; with ``graph=True`` the pass is captured
    on the first call and replayed afterwards (CUDA only).
    """

    def __init__(self, model, cache, num_new: int, *, last_only: bool = False, graph: bool = False):
        self.model, self.cache, self.num_new, self.last_only = model, cache, num_new, last_only
        self.graph = None
        if graph:
            if cache.device.type != "cuda":
                raise ValueError("CUDA graphs need the model and cache on a CUDA device")
            if not getattr(cache, "static_shapes", False):
                raise ValueError("CUDA graphs need a cache built with static_shapes=True")
            self._capture()

    def _body(self):
        positions = self.cache.lengths.long()[:, None] + self._arange[None, :]
        return self.model.forward_positions(self.tokens, positions, self.cache, last_only=self.last_only)

    def _capture(self) -> None:
        cache, S = self.cache, self.num_new
        self.tokens = torch.zeros(cache.batch_size, S, dtype=torch.long, device=cache.device)
        self._arange = torch.arange(S, device=cache.device)
        saved = cache.host_lengths()

        def warmup():  # a pass begun and never committed writes only past each row's length: invisible
            cache.begin(S)
            self._body()
            cache.truncate(saved)

        self.graph, self.logits = capture(self._body, warmup=warmup, before=lambda: cache.begin(S))
        cache.truncate(saved)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            return self.model(tokens, self.cache, last_only=self.last_only)
        self.tokens.copy_(tokens)
        self.cache.begin(self.num_new)
        self.graph.replay()
        self.cache.commit()
        return self.logits
