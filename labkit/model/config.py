"""The model's shape and flavour, and the two shipped sizes.

One :class:`ModelConfig` describes both the course's own models (RoPE, RMSNorm, no biases,
tied embeddings) and GPT-2 (learned positions, LayerNorm, biases, tanh GELU), so a Hugging
Face GPT-2 state dict loads into the same :class:`~labkit.model.transformer.Transformer`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

POSITIONS = ("rope", "learned")
NORMS = ("rmsnorm", "layernorm")
ACTIVATIONS = ("gelu_tanh", "gelu")


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only, pre-norm transformer."""

    vocab_size: int
    d_model: int = 256
    n_layers: int = 12
    n_heads: int = 4
    n_kv_heads: int | None = None  # fewer than n_heads: grouped-query attention; None: n_heads
    d_ff: int | None = None  # MLP hidden size; None: 4 * d_model
    max_len: int = 1024  # longest sequence (rows of the RoPE tables or of the learned positions)
    position: str = "rope"  # "rope" (rotate-half, labkit.rope) or "learned" (GPT-2's wpe)
    norm: str = "rmsnorm"  # "rmsnorm" or "layernorm"
    activation: str = "gelu_tanh"  # GPT-2's gelu_new is the tanh approximation
    bias: bool = False  # biases in every linear layer and norm (GPT-2: True)
    tied_embeddings: bool = True  # the output head reuses the token embedding
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0  # training only

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.kv_heads})")
        for name, allowed in (("position", POSITIONS), ("norm", NORMS), ("activation", ACTIVATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {allowed}")
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head dim, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ff_dim(self) -> int:
        return self.d_ff or 4 * self.d_model

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls(**json.loads(text))

    def with_(self, **changes) -> "ModelConfig":
        return replace(self, **changes)


# The shipped pair. On a GPU at batch 1 these models are launch-bound: a forward pass costs
# about (layers x kernels per layer), nearly independent of width or of a few extra tokens.
# So the draft is one layer (about 1/10 of the target's cost per token) and the target's
# verify pass over gamma + 1 tokens costs about one decode step.
# LayerNorm rather than RMSNorm: one fused kernel in every torch version.
SIZES = {
    "target": dict(d_model=256, n_layers=12, n_heads=4, d_ff=768, max_len=1024, norm="layernorm", dropout=0.2),
    "draft": dict(d_model=256, n_layers=1, n_heads=4, d_ff=768, max_len=1024, norm="layernorm", dropout=0.0),
}


def preset(size: str, vocab_size: int) -> ModelConfig:
    """The config of a shipped size, ``"target"`` or ``"draft"``."""
    if size not in SIZES:
        raise ValueError(f"size={size!r}; expected one of {sorted(SIZES)}")
    return ModelConfig(vocab_size=vocab_size, **SIZES[size])
