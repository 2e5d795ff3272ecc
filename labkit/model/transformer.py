"""A small decoder-only transformer whose attention goes through a KV cache.

Pre-norm blocks: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``. Without a cache a forward
pass recomputes causal attention over the whole sequence (training, and the reference the
cached path is tested against); with a :class:`~labkit.kvcache.base.KVCache` it feeds only
the new tokens, and the cache's ``attend`` picks the attention implementation (SDPA, or a
decode kernel from :mod:`labkit.attention` such as ``"triton_splitk"``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from labkit.attention import causal_attention
from labkit.model.config import ModelConfig
from labkit.rope import rope_tables


def _norm(config: ModelConfig) -> nn.Module:
    if config.norm == "layernorm":
        return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)
    return nn.RMSNorm(config.d_model, eps=config.norm_eps)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE, rotate-half convention, in few kernels: ``x·cos + rotate_half(x)·sin``.

    x: [B, S, H, D]; cos: [B, S, 1, D] (the table's halves repeated), sin: [B, S, 1, D] with
    its first half negated, so ``rotate_half(x)`` is just the two halves swapped.
    """
    half = x.shape[-1] // 2
    swapped = torch.cat([x[..., half:], x[..., :half]], dim=-1)
    return torch.addcmul(x * cos, swapped, sin)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.qkv = nn.Linear(config.d_model, (self.n_heads + 2 * self.n_kv) * self.head_dim, bias=config.bias)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x, rope, cache, layer: int):
        B, S, _ = x.shape
        qkv = self.qkv(x).view(B, S, self.n_heads + 2 * self.n_kv, self.head_dim)
        q, k = qkv[:, :, : self.n_heads], qkv[:, :, self.n_heads: self.n_heads + self.n_kv]
        v = qkv[:, :, self.n_heads + self.n_kv:]
        if rope is not None and getattr(cache, "fuses_rope", False):
            q = rotate(q, *rope)  # the cache rotates k in the launch that writes it
        elif rope is not None:
            qk = rotate(qkv[:, :, : self.n_heads + self.n_kv], *rope)  # q and k together: one set of kernels
            q, k = qk[:, :, : self.n_heads], qk[:, :, self.n_heads:]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # q [B, Hq, S, D]; k, v [B, Hkv, S, D]
        if cache is None:
            o = causal_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        else:
            cache.append(layer, k, v)
            o = cache.attend(layer, q)
        return self.proj(o.transpose(1, 2).reshape(B, S, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.ff_dim, bias=config.bias)
        self.proj = nn.Linear(config.ff_dim, config.d_model, bias=config.bias)
        self.approximate = "tanh" if config.activation == "gelu_tanh" else "none"

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate=self.approximate))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm1, self.attn = _norm(config), Attention(config)
        self.norm2, self.mlp = _norm(config), MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, rope, cache, layer: int):
        x = x + self.drop(self.attn(self.norm1(x), rope, cache, layer))
        return x + self.drop(self.mlp(self.norm2(x)))


class Transformer(nn.Module):
    """Decoder-only transformer. ``forward(tokens [B, S] int64, cache=None) -> logits [B, S, V]``.

    Logits come in the model's dtype (fp16 or fp32). Parameter names: ``embed``,
    ``pos_embed`` (learned positions only), ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,
    mlp.fc,mlp.proj}``, ``norm``, ``head`` (absent when tied to ``embed``).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_embed = nn.Embedding(config.max_len, config.d_model) if config.position == "learned" else None
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = _norm(config)
        self.head = None if config.tied_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.position == "rope":
            cos, sin = rope_tables(config.max_len, config.head_dim, base=config.rope_base)
            # Stored full width ([max_len, D]) with sin's first half negated: see rotate().
            self.register_buffer("rope_cos", torch.cat([cos, cos], -1), persistent=False)
            self.register_buffer("rope_sin", torch.cat([-sin, sin], -1), persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int, max_len: int, *, fused_rope: bool = False, write_kernel=None, **kwargs):
        """A :class:`~labkit.kvcache.contiguous.ContiguousKVCache` sized for this model (kwargs: impl, ...).

        fused_rope: a :class:`~labkit.kvcache.contiguous.FusedRopeKVCache` instead, which rotates
        the keys as it writes them (RoPE models only), launching ``write_kernel`` (default:
        labkit's ``write_kv_rope_kernel``); the model then rotates only q.
        """
        from labkit.kvcache.contiguous import ContiguousKVCache, FusedRopeKVCache

        p = next(self.parameters())
        c = self.config
        if not fused_rope:
            if write_kernel is not None:
                raise ValueError("write_kernel is the fused RoPE write's kernel: pass it with fused_rope=True")
            return ContiguousKVCache(c.n_layers, batch_size, c.kv_heads, c.head_dim, max_len,
                                     dtype=p.dtype, device=p.device, **kwargs)
        if c.position != "rope":
            raise ValueError(f"fused_rope=True needs a RoPE model; this one has position={c.position!r}")
        half = c.head_dim // 2
        # The values the unfused rotation reads (see __init__: sin's first half is negated there).
        tables = (self.rope_cos[:, :half], self.rope_sin[:, half:])
        return FusedRopeKVCache(c.n_layers, batch_size, c.kv_heads, c.head_dim, max_len, rope_tables=tables,
                                write_kernel=write_kernel, dtype=p.dtype, device=p.device, **kwargs)

    def forward(self, tokens: torch.Tensor, cache=None, *, last_only: bool = False) -> torch.Tensor:
        """Logits [B, S, V] for tokens [B, S] (``last_only``: [B, 1, V] for the last position).

        With ``cache``, the tokens continue each row's cached sequence and are committed to
        it; without, they are a whole sequence starting at position 0.
        """
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be a [B, S] int64 tensor, got {tuple(tokens.shape)} {tokens.dtype}")
        B, S = tokens.shape
        if cache is None:
            if S > self.config.max_len:
                raise ValueError(f"{S} tokens exceed the model's max_len={self.config.max_len}")
            positions = torch.arange(S, device=tokens.device)[None, :].expand(B, S)
            return self.forward_positions(tokens, positions, None, last_only=last_only)
        if max(cache.host_lengths()) + S > self.config.max_len:
            raise ValueError(f"{S} more tokens would take a row past the model's max_len={self.config.max_len}")
        positions = cache.begin(S)
        logits = self.forward_positions(tokens, positions, cache, last_only=last_only)
        cache.commit()
        return logits

    def forward_positions(self, tokens, positions, cache, *, last_only: bool = False) -> torch.Tensor:
        """The forward pass proper, given each token's position [B, S] int64: only device work.

        Between ``cache.begin`` and ``cache.commit`` this touches device tensors only, so it
        can be captured in a CUDA graph (see :mod:`labkit.decoding.graphs`).
        """
        x = self.embed(tokens)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        rope = None
        if self.config.position == "rope":
            # Gathered once per pass and shared by every layer.
            rope = (self.rope_cos[positions].unsqueeze(2).to(x.dtype),
                    self.rope_sin[positions].unsqueeze(2).to(x.dtype))
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i)
        if last_only:
            x = x[:, -1:]
        x = self.norm(x)
        return F.linear(x, self.embed.weight if self.head is None else self.head.weight)
