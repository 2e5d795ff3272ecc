"""A batch-1 forward pass of a :class:`~labkit.model.Transformer` in few kernels, for CUDA graphs.

At batch 1 a small model is launch-bound: a pass costs about (number of kernels) × a few
µs, whatever its width or its number of new tokens. :class:`StaticEngine` computes exactly the
model's function (same weights, same ops up to rounding) with fewer kernels and no host work:

- the KV cache is token-major ``[L, T, 2, H, D]`` and written by position, one
  ``index_copy_`` per layer; a row's length is never stored: the causal mask by position hides
  stale slots, so rolling back rejected tokens costs nothing (the next pass overwrites them);
- RoPE is a rotation, so each position has a ``[D, D]`` matrix; q, k and v (identity) of all
  heads go through one batched matmul against the matrices of their positions;
- the causal masks and rotations of a decode round are gathered once from ``[T, T]`` and
  ``[T, 3, D, D]`` tables (:meth:`tables`) and shared by every pass of the round;
- residual adds are in-place matmuls (``x.addmm_``); with a small vocabulary the first
  layer's ``norm → qkv`` is a per-token table lookup.

Positions and tokens are device tensors, so a pass is capturable in a CUDA graph and a whole
decode round (several passes, sampling, acceptance) can be one graph replay.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from labkit.attention import masked_attention

# mm: one GEMM over the S new tokens (cuBLAS); bmv: S matrix-vector products in one batched call
# (cuBLAS's M = 1 kernels); lt: one GEMM through cuBLASLt (other heuristics). On the CPU all are mm.
LINEAR_MODES = ("mm", "bmv", "lt")


@contextlib.contextmanager
def _blas(mode: str, device: torch.device):
    """cuBLASLt for the pass's matmuls when mode is "lt" (chosen at launch, so baked into a captured graph)."""
    if mode != "lt" or device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library("cublaslt")
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(before)


class StaticEngine:
    """Device-resident, batch-1 forward of ``model`` over positions ``< max_len``.

    linear: one of ``LINEAR_MODES`` or a dict {S: mode} per pass size (missing S: "mm"). At
    S = 1 cuBLAS runs a matrix-vector kernel; for S > 1 which mode is fastest depends on the
    libraries' heuristics, so it is measured (``labkit bench --sections speculative``), not assumed.
    """

    def __init__(self, model, max_len: int, *, linear="mm"):
        c = model.config
        if c.position != "rope":
            raise ValueError(f"StaticEngine needs a RoPE model, got position={c.position!r}")
        if c.kv_heads != c.n_heads:
            raise ValueError(f"StaticEngine needs n_kv_heads == n_heads, got {c.kv_heads} and {c.n_heads}")
        if not 2 <= max_len <= c.max_len:
            raise ValueError(f"max_len must be in [2, {c.max_len}] (the model's max_len), got {max_len}")
        modes = set(linear.values()) if isinstance(linear, dict) else {linear}
        if not modes <= set(LINEAR_MODES):
            raise ValueError(f"linear must be one of {LINEAR_MODES} or a dict of them, got {linear!r}")
        self.model, self.config, self.linear = model, c, linear
        p = model.embed.weight
        self.device, self.dtype = p.device, p.dtype
        self.H, self.D = c.n_heads, c.head_dim
        self.T = T = min(c.max_len, -(-max_len // 16) * 16)  # 16-aligned mask rows for SDPA's kernels
        self.kv = torch.zeros(c.n_layers, T, 2, self.H, self.D, dtype=self.dtype, device=self.device)
        self.head = model.embed.weight if model.head is None else model.head.weight
        with torch.no_grad():
            self.tri = torch.full((T, T), float("-inf"), dtype=self.dtype, device=self.device).triu_(1)
            self.rot = self._rotations(T)
            b0 = model.blocks[0]
            self.qkv0 = None  # layer 0's norm → qkv for every token id, when the vocabulary is small
            if c.vocab_size <= 4096:
                self.qkv0 = b0.attn.qkv(b0.norm1(model.embed.weight)).contiguous()

    def _rotations(self, T: int) -> torch.Tensor:
        """[T, 3, D, D]: x @ rot[p, 0] is the model's rotate() of x at position p (q; k the same;
        v: identity). From the model's own tables: rotate(x) = x·cos + swap_halves(x)·sin."""
        D, h = self.D, self.D // 2
        cos = self.model.rope_cos[:T].to(self.dtype)
        sin = self.model.rope_sin[:T].to(self.dtype)
        rot = torch.zeros(T, 3, D, D, dtype=self.dtype, device=self.device)
        i = torch.arange(D, device=self.device)
        rot[:, 0, i, i] = cos
        rot[:, 0, (i + h) % D, i] = sin  # out[i] += x[(i + h) mod D] · sin[i]
        rot[:, 1] = rot[:, 0]
        rot[:, 2, i, i] = 1
        return rot

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rotations [S, 3, D, D], additive causal mask [S, T]) for positions [S] int64 (device)."""
        return self.rot[positions], self.tri[positions]

    def compatible(self, other: "StaticEngine") -> bool:
        """Whether ``other``'s tables are this engine's (then a round gathers them once for both)."""
        return (self.T, self.D, self.dtype) == (other.T, other.D, other.dtype) and torch.equal(self.rot, other.rot)

    def _mode(self, S: int) -> str:
        return self.linear.get(S, "mm") if isinstance(self.linear, dict) else self.linear

    def _linear(self, x, layer, mode):  # x [S, K] -> [S, N]
        if mode == "bmv" and x.shape[0] > 1:
            S, N, K = x.shape[0], layer.weight.shape[0], x.shape[1]
            y = torch.bmm(layer.weight.expand(S, N, K), x.reshape(S, K, 1)).view(S, N)
            return y if layer.bias is None else y.add_(layer.bias)
        return F.linear(x, layer.weight, layer.bias)

    def _add_linear_(self, x, u, layer, mode):  # x += u @ W^T (+ b), in place: one kernel
        if mode == "bmv" and x.shape[0] > 1:
            S, N, K = x.shape[0], layer.weight.shape[0], u.shape[1]
            x.view(S, N, 1).baddbmm_(layer.weight.expand(S, N, K), u.reshape(S, K, 1))
        else:
            x.addmm_(u, layer.weight.t())
        if layer.bias is not None:
            x.add_(layer.bias)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, rot: torch.Tensor, mask: torch.Tensor, *,
                last_only: bool = False) -> torch.Tensor:
        """Logits [S, V] (``last_only``: [1, V]) for tokens [S] int64 at positions [S] int64.

        rot [S, 3, D, D] and mask [S, T] come from :meth:`tables` for the same positions.
        Writes the tokens' keys and values into the cache at their positions. Device work only.
        """
        S = tokens.shape[0]
        mode = self._mode(S)
        with _blas(mode, self.device):
            return self._forward(tokens, positions, rot, mask, last_only, S, mode)

    def _forward(self, tokens, positions, rot, mask, last_only, S, mode):
        H, D = self.H, self.D
        x = F.embedding(tokens, self.model.embed.weight)  # [S, d], the residual stream (updated in place)
        attn_mask = mask[None, None]
        for i, block in enumerate(self.model.blocks):
            if i == 0 and self.qkv0 is not None:
                qkv = F.embedding(tokens, self.qkv0)
            else:
                qkv = self._linear(block.norm1(x), block.attn.qkv, mode)  # [S, 3·H·D]
            r = torch.bmm(qkv.view(S * 3, H, D), rot.view(S * 3, D, D)).view(S, 3, H, D)  # RoPE on q, k
            self.kv[i].index_copy_(0, positions, r[:, 1:])
            q = r[:, 0].unsqueeze(0).transpose(1, 2)  # [1, H, S, D]
            k = self.kv[i, :, 0].unsqueeze(0).transpose(1, 2)  # [1, H, T, D], token-major underneath
            v = self.kv[i, :, 1].unsqueeze(0).transpose(1, 2)
            o = masked_attention(q, k, v, attn_mask)
            self._add_linear_(x, o.transpose(1, 2).reshape(S, H * D), block.attn.proj, mode)
            u = F.gelu(self._linear(block.norm2(x), block.mlp.fc, mode), approximate=block.mlp.approximate)
            self._add_linear_(x, u, block.mlp.proj, mode)
        if last_only:
            x = x[-1:]
        return F.linear(self.model.norm(x), self.head)

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor) -> None:
        """Cache the keys and values of tokens [P] int64 at positions 0 .. P-1 (eager)."""
        if tokens.numel() > self.T:
            raise ValueError(f"{tokens.numel()} tokens exceed the engine's max_len={self.T}")
        pos = torch.arange(tokens.numel(), device=self.device)
        self.forward(tokens, pos, *self.tables(pos), last_only=True)

