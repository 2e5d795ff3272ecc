"""Load a Hugging Face GPT-2 state dict into labkit's :class:`~labkit.model.transformer.Transformer`.

GPT-2 is the same pre-norm decoder with learned positions, LayerNorm, biases, tanh GELU
and tied embeddings. Its names differ, and its projections are ``Conv1D`` layers that store
weights as ``[in, out]`` (transposed from ``nn.Linear``). Nothing is downloaded: pass the
state dict you have (``GPT2LMHeadModel.state_dict()``, with or without the ``transformer.``
prefix, or a safetensors file's tensors)::

    model = load_gpt2_state_dict(state_dict, n_head=12)

Every tensor is checked first: a missing, unexpected or mis-shaped tensor raises
``ValueError`` naming it and the shape expected.
"""

from __future__ import annotations

import re

import torch

from labkit.model.config import ModelConfig
from labkit.model.transformer import Transformer

# Buffers some transformers versions keep in the state dict (the causal mask): not weights.
_IGNORED = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")


def gpt2_config(*, n_layer: int, n_head: int, n_embd: int, vocab_size: int = 50257, n_positions: int = 1024,
                layer_norm_epsilon: float = 1e-5, tied: bool = True) -> ModelConfig:
    """The :class:`ModelConfig` of a GPT-2 (arguments named as in Hugging Face's ``GPT2Config``)."""
    return ModelConfig(vocab_size=vocab_size, d_model=n_embd, n_layers=n_layer, n_heads=n_head,
                       d_ff=4 * n_embd, max_len=n_positions, position="learned", norm="layernorm",
                       activation="gelu_tanh", bias=True, tied_embeddings=tied, norm_eps=layer_norm_epsilon)


def gpt2_layout(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """GPT-2's tensor names (no ``transformer.`` prefix) and shapes for ``config``."""
    d, f = config.d_model, config.ff_dim
    layout = {"wte.weight": (config.vocab_size, d), "wpe.weight": (config.max_len, d)}
    for i in range(config.n_layers):
        p = f"h.{i}."
        layout.update({
            p + "ln_1.weight": (d,), p + "ln_1.bias": (d,),
            p + "attn.c_attn.weight": (d, 3 * d), p + "attn.c_attn.bias": (3 * d,),
            p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
            p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
            p + "mlp.c_fc.weight": (d, f), p + "mlp.c_fc.bias": (f,),
            p + "mlp.c_proj.weight": (f, d), p + "mlp.c_proj.bias": (d,),
        })
    layout.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})
    return layout


def _strip(state_dict: dict) -> dict:
    out = {}
    for name, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state_dict[{name!r}] must be a torch.Tensor, got {type(t).__name__}")
        out[name[len("transformer."):] if name.startswith("transformer.") else name] = t
    return out


def config_from_state_dict(state_dict: dict, *, n_head: int, layer_norm_epsilon: float = 1e-5) -> ModelConfig:
    """Infer a GPT-2 config from tensor shapes (the head count isn't in them: pass ``n_head``)."""
    sd = _strip(state_dict)
    for name in ("wte.weight", "wpe.weight"):
        if name not in sd:
            raise ValueError(f"the state dict has no {name!r}: not a GPT-2 state dict")
        if sd[name].dim() != 2:
            raise ValueError(f"{name!r} has shape {list(sd[name].shape)}; expected 2 dimensions [rows, n_embd]")
    vocab, d = sd["wte.weight"].shape
    layers = {int(m.group(1)) for m in (re.match(r"^h\.(\d+)\.", k) for k in sd) if m}
    if not layers:
        raise ValueError("the state dict has no blocks (h.0.*): not a GPT-2 state dict")
    if d % n_head:
        raise ValueError(f"n_embd={d} (from wte.weight) is not a multiple of n_head={n_head}")
    return gpt2_config(n_layer=max(layers) + 1, n_head=n_head, n_embd=d, vocab_size=vocab,
                       n_positions=sd["wpe.weight"].shape[0], layer_norm_epsilon=layer_norm_epsilon,
                       tied="lm_head.weight" not in sd or torch.equal(sd["lm_head.weight"], sd["wte.weight"]))


def check_gpt2_state_dict(state_dict: dict, config: ModelConfig) -> dict:
    """Raise ``ValueError`` naming every missing, unexpected or mis-shaped tensor; return the stripped dict."""
    sd = _strip(state_dict)
    layout = gpt2_layout(config)
    problems = []
    for name, shape in layout.items():
        if name not in sd:
            problems.append(f"missing tensor {name!r} (expected shape {list(shape)})")
        elif tuple(sd[name].shape) != shape:
            problems.append(f"tensor {name!r} has shape {list(sd[name].shape)}, expected {list(shape)}")
    head = (config.vocab_size, config.d_model)
    if "lm_head.weight" in sd and tuple(sd["lm_head.weight"].shape) != head:
        problems.append(f"tensor 'lm_head.weight' has shape {list(sd['lm_head.weight'].shape)}, expected {list(head)}")
    extra = sorted(k for k in sd if k not in layout and k != "lm_head.weight" and not _IGNORED.match(k))
    problems += [f"unexpected tensor {k!r} (not part of a {config.n_layers}-layer GPT-2)" for k in extra]
    if problems:
        raise ValueError("GPT-2 state dict doesn't fit: " + "; ".join(problems))
    return sd


def load_gpt2_state_dict(state_dict: dict, *, n_head: int, config: ModelConfig | None = None,
                         dtype: torch.dtype = torch.float32, device=None) -> Transformer:
    """A :class:`Transformer` holding GPT-2's weights. Conv1D weights [in, out] are transposed."""
    config = config or config_from_state_dict(state_dict, n_head=n_head)
    sd = check_gpt2_state_dict(state_dict, config)
    ours = {"embed.weight": sd["wte.weight"], "pos_embed.weight": sd["wpe.weight"],
            "norm.weight": sd["ln_f.weight"], "norm.bias": sd["ln_f.bias"]}
    if not config.tied_embeddings:
        ours["head.weight"] = sd["lm_head.weight"]
    for i in range(config.n_layers):
        g, o = f"h.{i}.", f"blocks.{i}."
        for theirs, mine in (("ln_1", "norm1"), ("ln_2", "norm2")):
            ours[o + mine + ".weight"], ours[o + mine + ".bias"] = sd[g + theirs + ".weight"], sd[g + theirs + ".bias"]
        for theirs, mine in (("attn.c_attn", "attn.qkv"), ("attn.c_proj", "attn.proj"),
                             ("mlp.c_fc", "mlp.fc"), ("mlp.c_proj", "mlp.proj")):
            ours[o + mine + ".weight"] = sd[g + theirs + ".weight"].t()
            ours[o + mine + ".bias"] = sd[g + theirs + ".bias"]
    model = Transformer(config)
    model.load_state_dict({k: v.to(torch.float32) for k, v in ours.items()}, strict=True)
    return model.to(device=device, dtype=dtype).eval()
