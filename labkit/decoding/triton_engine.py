"""The batch-1 engine with every layer in three Triton kernels (:mod:`labkit.decoding.triton_layers`).

:class:`TritonEngine` is a :class:`~labkit.decoding.engine.StaticEngine` (same cache, same
prefill, same PyTorch pass for sampling) with one more way to run a pass: :meth:`run_pass`,
``3 × layers + 1`` kernel launches that read the pass's tokens from a token buffer ``seq`` at
positions ``n + offset …`` and write the argmax back into it. ``n`` is a device scalar, so a
pass, or a whole speculative round, is capturable in a CUDA graph and needs no host work:

- plain decoding: ``run_pass(seq, n, -1, 1, advance=True)`` feeds ``seq[n-1]``, writes
  ``seq[n]`` and adds 1 to ``n``;
- a draft step: ``run_pass(seq, n, off, S)`` writes the argmax of its last row to ``seq[n+off+S]``;
- verification: ``run_pass(seq, n, -1, γ + 1, counts=counts)`` compares the target's
  argmaxes with the draft tokens in ``seq``, keeps the agreeing prefix plus one, advances ``n``.

The kernels compute the model's function with fp32 accumulation and round where the model
does (the residual stream, the cache and the matmul operands are in the model's dtype).
"""

from __future__ import annotations

import math

import torch

from labkit.attention.splits import LOG2E
from labkit.decoding.engine import StaticEngine
from labkit.decoding.triton_layers import _attention_block_kernel, _head_kernel, _mlp_down_kernel, _mlp_up_kernel

BLOCK_S = 16  # rows of every tile: tl.dot's minimum, so up to 16 tokens a pass (γ ≤ 15)
BLOCK_T = 32  # cache slots per attention tile


def _power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _block(n: int, most: int) -> int:
    """The largest power of two ≤ ``most`` that divides ``n`` (16 or more for the shapes
    :class:`TritonEngine` accepts: tl.dot's minimum)."""
    b = most
    while n % b:
        b //= 2
    return b


def tiles(config, dtype: torch.dtype) -> dict:
    """The kernels' tile sizes for a model: ``BLOCK_F`` (hidden units a program of the up
    kernel), ``BLOCK_K_PROJ`` and ``BLOCK_K_DOWN`` (the K chunks of the two projections that
    loop over K), ``BLOCK_N`` (model dims a program of the down kernel) and ``BLOCK_V`` (logits
    a step of the head). The weight tiles are what ``tl.dot`` stages in shared memory, so fp32
    takes half of fp16's: at d = 256 the sm_75 builds then need at most 64 KB, the T4's limit
    (tests/test_triton_engine.py compiles them)."""
    wide = 2 if dtype == torch.float16 else 1
    return dict(BLOCK_F=_block(config.ff_dim, 32 * wide), BLOCK_K_PROJ=_block(config.d_model, 32),
                BLOCK_K_DOWN=_block(config.ff_dim, 128), BLOCK_N=_block(config.d_model, 32),
                BLOCK_V=min(16 * wide, max(16, 1 << (config.vocab_size - 1).bit_length())))


class TritonEngine(StaticEngine):
    """A :class:`StaticEngine` whose greedy passes run as Triton kernels (:meth:`run_pass`).

    The model must have the course's shape: RoPE, LayerNorm or RMSNorm, no biases in its
    linear layers, tanh GELU, ``d_model`` and ``head_dim`` powers of two (``head_dim ≥ 32``,
    so each rotate-half is a 16-wide ``tl.dot`` operand), ``d_ff`` a multiple of 16.
    """

    def __init__(self, model, max_len: int, *, linear="mm"):
        super().__init__(model, max_len, linear=linear)
        c = self.config
        problems = []
        if c.bias:
            problems.append("bias=False (no biases in the linear layers)")
        if c.activation != "gelu_tanh":
            problems.append(f"activation='gelu_tanh', got {c.activation!r}")
        if not (_power_of_two(c.d_model) and c.d_model >= 16):
            problems.append(f"d_model a power of two >= 16, got {c.d_model}")
        if not (_power_of_two(c.head_dim) and c.head_dim >= 32):
            problems.append(f"head_dim a power of two >= 32, got {c.head_dim}")
        if c.ff_dim % 16:
            problems.append(f"d_ff a multiple of 16, got {c.ff_dim}")
        if self.dtype not in (torch.float16, torch.float32):
            problems.append(f"fp16 or fp32 weights, got {self.dtype}")
        if problems:
            raise ValueError("TritonEngine needs " + "; ".join(problems))
        dev, dt, d, H, D = self.device, self.dtype, c.d_model, self.H, self.D
        self.x = torch.zeros(BLOCK_S, d, dtype=dt, device=dev)  # residual stream between layers
        self.x2 = torch.zeros(BLOCK_S, d, dtype=dt, device=dev)  # ... after attention
        self.o = torch.zeros(BLOCK_S, H * D, dtype=dt, device=dev)
        self.u = torch.zeros(BLOCK_S, c.ff_dim, dtype=dt, device=dev)
        self.logits = torch.zeros(BLOCK_S, c.vocab_size, dtype=torch.float32, device=dev)
        # the model's full-width tables hold [cos, cos] and [-sin, sin]: keep one half of each
        self.cos = model.rope_cos[:, : D // 2].float().contiguous()
        self.sin = model.rope_sin[:, D // 2:].float().contiguous()
        self.rms = c.norm == "rmsnorm"
        self.tiles = tiles(c, dt)
        self._dummy = torch.zeros(1, dtype=dt, device=dev)

    def _bias(self, norm):
        return (norm.bias, True) if getattr(norm, "bias", None) is not None else (self._dummy, False)

    @torch.no_grad()
    def logits_at(self, tokens: torch.Tensor, start: int, S: int) -> torch.Tensor:
        """Logits fp32 [S, V] of one Triton pass over ``tokens[start : start + S]`` (int64 [≥ start + S]),
        after the PyTorch prefill of ``tokens[:start]``: what ``model(tokens[None])[0, start : start + S]``
        should give. For checks; uses a fresh token buffer, so ``tokens`` is not written."""
        if not (1 <= start and start + S <= min(tokens.numel(), self.T)):
            raise ValueError(f"need 1 <= start and start + S <= min(len(tokens), max_len={self.T}); got start={start}, "
                             f"S={S}, {tokens.numel()} tokens")
        seq = torch.zeros(self.T + 1, dtype=torch.long, device=self.device)
        seq[:start + S] = tokens[:start + S]
        self.prefill(seq[:start])
        return self.run_pass(seq, torch.full((), start + 1, dtype=torch.long, device=self.device), -1, S)

    @torch.no_grad()
    def run_pass(self, seq: torch.Tensor, n: torch.Tensor, offset: int, S: int, *, advance: bool = False,
                 counts: torch.Tensor | None = None) -> torch.Tensor:
        """One greedy pass over ``S`` tokens at positions ``n + offset …``; returns logits fp32 [S, V].

        seq: [≥ n + offset + S + 1] int64 token buffer; n: [] int64 tokens so far (device).
        Writes the pass's keys and values into the cache and the last row's argmax into
        ``seq[n + offset + S]``; ``advance`` then adds 1 to ``n``. ``counts`` ([≥ S + 1] int64)
        makes it a verification pass (see the module docstring); ``counts[k] += 1`` for the
        k tokens it keeps. Kernel launches only: no host sync, no allocation.
        """
        if not 1 <= S <= BLOCK_S:
            raise ValueError(f"S must be in [1, {BLOCK_S}], got {S}")
        c, model = self.config, self.model
        d, H, D, F, V = c.d_model, self.H, self.D, c.ff_dim, c.vocab_size
        eps = c.norm_eps
        scale = LOG2E / math.sqrt(D)
        tile = self.tiles
        for i, block in enumerate(model.blocks):
            nb1, has_b1 = self._bias(block.norm1)
            _attention_block_kernel[(H,)](
                self.x, seq, n, model.embed.weight, block.norm1.weight, nb1, block.attn.qkv.weight,
                self.cos, self.sin, self.kv[i], self.o, offset, S, scale, eps,
                H=H, D=D, DM=d, BLOCK_S=BLOCK_S, BLOCK_T=BLOCK_T, FIRST=i == 0, RMS=self.rms, NORM_BIAS=has_b1,
                num_warps=4)
            nb2, has_b2 = self._bias(block.norm2)
            _mlp_up_kernel[(F // tile["BLOCK_F"],)](
                self.x, self.o, self.x2, self.u, block.attn.proj.weight, block.norm2.weight, nb2,
                block.mlp.fc.weight, S, eps,
                DM=d, F=F, BLOCK_S=BLOCK_S, BLOCK_F=tile["BLOCK_F"], BLOCK_K=tile["BLOCK_K_PROJ"], RMS=self.rms,
                NORM_BIAS=has_b2, num_warps=4)
            _mlp_down_kernel[(d // tile["BLOCK_N"],)](
                self.x2, self.u, block.mlp.proj.weight, self.x, S,
                F=F, DM=d, BLOCK_S=BLOCK_S, BLOCK_N=tile["BLOCK_N"], BLOCK_K=tile["BLOCK_K_DOWN"], num_warps=4)
        nbf, has_bf = self._bias(model.norm)
        _head_kernel[(1,)](
            self.x, model.norm.weight, nbf, self.head, self.logits, seq, n,
            counts if counts is not None else n, offset, S, V, eps,
            DM=d, BLOCK_S=BLOCK_S, BLOCK_V=tile["BLOCK_V"], RMS=self.rms, NORM_BIAS=has_bf,
            ADVANCE=advance and counts is None, VERIFY=counts is not None, num_warps=4)
        return self.logits[:S]


__all__ = ["BLOCK_S", "BLOCK_T", "TritonEngine", "tiles"]
