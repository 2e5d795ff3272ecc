"""Plain autoregressive decoding with a KV cache: one target pass per token."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from labkit.decoding.graphs import Step
from labkit.decoding.sampling import check_sampling, sample_logits


@dataclass
class Generation:
    """What a decode loop produced and what it cost."""

    tokens: list[int]  # the new tokens (not the prompt)
    target_passes: int = 0  # forward passes of the target after the prefill
    draft_passes: int = 0
    proposed: int = 0  # draft tokens proposed
    evaluated: int = 0  # draft tokens the rule looked at (up to and including the first rejection)
    accepted: int = 0  # draft tokens accepted
    produced: int = 0  # tokens the passes yielded (the last round may overshoot len(tokens))
    seconds: float = 0.0  # wall clock of the decode loop, prefill included
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_pass(self) -> float:
        """New tokens per target pass (1 for plain decoding)."""
        return (self.produced or len(self.tokens)) / max(1, self.target_passes)

    @property
    def alpha(self) -> float:
        """Acceptance rate: accepted / evaluated draft tokens (each token accepted with probability alpha)."""
        return self.accepted / max(1, self.evaluated)


def as_prompt(prompt, device) -> torch.Tensor:
    """A prompt (list of ints or [P] / [1, P] int64 tensor) as [1, P] int64 on ``device``."""
    t = torch.as_tensor(prompt, dtype=torch.long).to(device)
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.shape[0] != 1 or t.shape[1] < 1:
        raise ValueError(f"prompt must be a non-empty list of token ids or a [1, P] tensor, got shape {tuple(t.shape)}")
    return t


def _device(model) -> torch.device:
    return next(model.parameters()).device


def new_cache(model, max_len: int, *, impl: str = "sdpa", graphs: bool = False, fused_rope: bool = False,
              write_kernel=None):
    """A batch-1 contiguous cache for ``model`` (static shapes when CUDA graphs will replay it).

    fused_rope, write_kernel: the cache rotates the keys as it writes them, with that kernel
    (see ``Transformer.new_cache``).
    """
    if max_len > model.config.max_len:
        raise ValueError(f"prompt + new tokens ({max_len}) exceed the model's max_len={model.config.max_len}")
    # A multiple of 16 keeps SDPA's memory-efficient kernel from padding the mask every pass.
    max_len = min(model.config.max_len, -(-max_len // 16) * 16)
    return model.new_cache(1, max_len, impl=impl, static_shapes=graphs, fused_rope=fused_rope,
                           write_kernel=write_kernel)


@torch.no_grad()
def generate(model, prompt, max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, generator: torch.Generator | None = None, impl: str = "sdpa",
             graphs: bool = False, fused_rope: bool = False, write_kernel=None) -> Generation:
    """Decode ``max_new_tokens`` tokens after ``prompt`` at batch 1, one target pass each.

    The cache holds every token but the last; each step feeds that token and samples the
    next (``temperature=0``: greedy). impl: the cache's attention (see ContiguousKVCache).
    graphs: replay the single-token step from a CUDA graph. fused_rope: every key is rotated
    by the cache write (``write_kernel``, default labkit's fused RoPE + KV write) instead of
    the model's PyTorch ops. Tokens stay on the device until the end: no host sync per token.
    """
    check_sampling(temperature, top_k, top_p)
    device = _device(model)
    prompt = as_prompt(prompt, device)
    cache = new_cache(model, prompt.shape[1] + max_new_tokens, impl=impl, graphs=graphs, fused_rope=fused_rope,
                      write_kernel=write_kernel)
    step = Step(model, cache, 1, last_only=True, graph=graphs)  # captured before the clock starts
    start = time.perf_counter()
    if prompt.shape[1] > 1:
        model(prompt[:, :-1], cache, last_only=True)
    out = torch.empty(max_new_tokens, dtype=torch.long, device=device)
    token = prompt[:, -1:]
    for i in range(max_new_tokens):
        nxt = sample_logits(step(token)[0, -1], temperature, top_k, top_p, generator)
        out[i] = nxt
        token = nxt.view(1, 1)
    tokens = out.tolist()
    return Generation(tokens=tokens, target_passes=max_new_tokens, seconds=time.perf_counter() - start)
