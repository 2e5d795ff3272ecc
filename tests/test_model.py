"""The model, its KV cache path, its files, its training script and the GPT-2 loader (sim mode, CPU)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import labkit  # noqa: F401  (mode first)
from labkit.kvcache import ContiguousKVCache
from labkit.model import CharTokenizer, ModelConfig, Transformer, load_model, read_metadata, save_model
from labkit.model.corpus import DATA_DIR, heldout_prompts, load_text, split
from labkit.model.gpt2 import gpt2_config, gpt2_layout, load_gpt2_state_dict
from labkit.model.transformer import rotate
from labkit.rope import apply_rope, rope_tables

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


FLAVOURS = {
    "rope-rmsnorm": dict(),
    "gpt2-style": dict(position="learned", norm="layernorm", bias=True, tied_embeddings=False, activation="gelu"),
    "gqa": dict(n_kv_heads=2),
}


def tiny(seed: int, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=23, d_model=32, n_layers=2, n_heads=4, max_len=96)
    cfg.update(kw)
    return Transformer(ModelConfig(**cfg)).eval()


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_cached_logits_equal_full_recompute(flavour):
    model = tiny(1, **FLAVOURS[flavour])
    tokens = torch.randint(0, 23, (3, 31))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(3, 40)
        pieces, i = [], 0
        for s in (9, 1, 5, 1, 1, 7, 1, 6):  # prefill, decode steps, a verify-sized chunk, odd chunks
            pieces.append(model(tokens[:, i:i + s], cache))
            i += s
    assert cache.host_lengths() == [31] * 3 and cache.lengths.tolist() == [31] * 3
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-4, atol=1e-5)


def test_rows_of_different_lengths_and_padding():
    """Right-padded prefill then truncate per row: each row decodes as if alone."""
    model = tiny(2)
    lens = [4, 11, 7]
    seqs = [torch.randint(0, 23, (n + 5,)) for n in lens]
    with torch.no_grad():
        cache = model.new_cache(3, 32)
        padded = torch.zeros(3, max(lens), dtype=torch.long)
        for b, n in enumerate(lens):
            padded[b, :n] = seqs[b][:n]
        model(padded, cache)
        cache.truncate(lens)  # drop each row's padding
        steps = []
        for j in range(5):
            steps.append(model(torch.stack([s[n + j] for s, n in zip(seqs, lens)])[:, None], cache))
        for b, n in enumerate(lens):
            alone = model(seqs[b][None])[0, n:]
            torch.testing.assert_close(torch.cat(steps, 1)[b], alone, rtol=1e-4, atol=1e-5)
    assert cache.host_lengths() == [n + 5 for n in lens]


def test_rollback_then_continue_equals_recompute():
    model = tiny(3)
    a, b = torch.randint(0, 23, (1, 14)), torch.randint(0, 23, (1, 6))
    with torch.no_grad():
        cache = model.new_cache(1, 30)
        model(a, cache)
        cache.truncate(9)  # reject the last 5
        got = model(b, cache)
        want = model(torch.cat([a[:, :9], b], 1))[:, 9:]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert cache.host_lengths() == [15]


@pytest.mark.parametrize("impl", ["reference", "triton_splitk", "sdpa"])
def test_cache_attend_through_a_decode_kernel(impl):
    """Single-token passes go through labkit.attention's kernel with per-row lengths; the rest through SDPA."""
    model = tiny(4, d_model=64, n_kv_heads=2)  # head dim 16: the Triton kernels' smallest
    tokens = torch.randint(0, 23, (2, 12))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(2, 16, impl=impl)
        assert cache._kernel == (impl != "sdpa")
        out = [model(tokens[:, :5], cache)] + [model(tokens[:, i:i + 1], cache) for i in range(5, 12)]
    torch.testing.assert_close(torch.cat(out, 1), full, rtol=1e-4, atol=1e-5)


def test_cache_rejects_bad_use():
    cache = ContiguousKVCache(2, 1, 2, 8, 10)
    with pytest.raises(ValueError, match="max_len=10"):
        cache.begin(11)
    cache.begin(3)
    with pytest.raises(ValueError, match=r"\[1, 2, 3, 8\]"):
        cache.append(0, torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8))
    with pytest.raises(TypeError, match="dtype"):
        cache.append(0, torch.zeros(1, 2, 3, 8, dtype=torch.float16), torch.zeros(1, 2, 3, 8, dtype=torch.float16))
    cache.commit()
    with pytest.raises(ValueError, match="can't truncate it to 5"):
        cache.truncate(5)
    with pytest.raises(ValueError, match="impl="):
        ContiguousKVCache(1, 1, 1, 8, 4, impl="nope")


def test_rope_in_the_model_matches_labkit_rope():
    D, n = 16, 40
    cos, sin = rope_tables(n, D)
    x = torch.randn(2, 7, 3, D)
    pos = torch.randint(0, n, (2, 7))
    full_cos, full_sin = torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1)
    got = rotate(x, full_cos[pos].unsqueeze(2), full_sin[pos].unsqueeze(2))
    torch.testing.assert_close(got, apply_rope(x, pos[..., None], cos, sin), rtol=1e-5, atol=1e-6)


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        ModelConfig(vocab_size=5, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="norm="):
        ModelConfig(vocab_size=5, norm="batchnorm")
    with pytest.raises(ValueError, match="tokens must be"):
        tiny(0)(torch.zeros(3, dtype=torch.long))


# ---------------------------------------------------------------- GPT-2

def gpt2_state_dict(n_layer=2, n_head=4, n_embd=32, vocab=50, n_pos=64, seed=0) -> dict:
    """A randomly initialised state dict with GPT2LMHeadModel's names and layout."""
    g = torch.Generator().manual_seed(seed)
    cfg = gpt2_config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab, n_positions=n_pos)
    sd = {"transformer." + k: torch.randn(shape, generator=g) * (0.3 if len(shape) > 1 else 0.1) + (1.0 if "ln" in k and k.endswith("weight") else 0.0)
          for k, shape in gpt2_layout(cfg).items()}
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    for i in range(n_layer):  # the causal-mask buffer some versions save
        sd[f"transformer.h.{i}.attn.bias"] = torch.ones(1, 1, n_pos, n_pos).tril()
    return sd


def gpt2_forward(sd: dict, tokens: torch.Tensor, n_head: int) -> torch.Tensor:
    """GPT-2 written from its definition (Conv1D: x @ W + b), independent of labkit's model."""
    w = {k.removeprefix("transformer."): v.double() for k, v in sd.items()}
    T = tokens.shape[1]
    x = w["wte.weight"][tokens] + w["wpe.weight"][:T]
    d = x.shape[-1]
    ln = lambda x, p: F.layer_norm(x, (d,), w[p + ".weight"], w[p + ".bias"], 1e-5)  # noqa: E731
    gelu = lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))  # noqa: E731
    i = 0
    while f"h.{i}.ln_1.weight" in w:
        h = f"h.{i}."
        qkv = ln(x, h + "ln_1") @ w[h + "attn.c_attn.weight"] + w[h + "attn.c_attn.bias"]
        q, k, v = (t.view(1, T, n_head, -1).transpose(1, 2) for t in qkv.split(d, dim=-1))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // n_head)
        att = att.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf")).softmax(-1)
        o = (att @ v).transpose(1, 2).reshape(1, T, d)
        x = x + o @ w[h + "attn.c_proj.weight"] + w[h + "attn.c_proj.bias"]
        m = gelu(ln(x, h + "ln_2") @ w[h + "mlp.c_fc.weight"] + w[h + "mlp.c_fc.bias"])
        x = x + m @ w[h + "mlp.c_proj.weight"] + w[h + "mlp.c_proj.bias"]
        i += 1
    return ln(x, "ln_f") @ w["wte.weight"].T


def test_gpt2_state_dict_loads_and_matches_gpt2():
    sd = gpt2_state_dict()
    model = load_gpt2_state_dict(sd, n_head=4)
    assert model.config.position == "learned" and model.config.n_layers == 2 and model.config.tied_embeddings
    tokens = torch.randint(0, 50, (1, 19))
    want = gpt2_forward(sd, tokens, 4)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).double(), want, rtol=1e-4, atol=1e-4)
        cache = model.new_cache(1, 20)  # the cached path works with learned positions too
        steps = torch.cat([model(tokens[:, :10], cache)] + [model(tokens[:, i:i + 1], cache) for i in range(10, 19)], 1)
    torch.testing.assert_close(steps.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("breakage, message", [
    ("missing", r"missing tensor 'h\.1\.mlp\.c_fc\.bias' \(expected shape \[128\]\)"),
    ("misshaped", r"tensor 'h\.0\.attn\.c_attn\.weight' has shape \[96, 32\], expected \[32, 96\]"),
    ("unexpected", r"unexpected tensor 'h\.0\.attn\.rotary'"),
    ("head", r"tensor 'lm_head\.weight' has shape \[50, 16\], expected \[50, 32\]"),
])
def test_gpt2_loader_rejects_bad_state_dicts(breakage, message):
    sd = gpt2_state_dict()
    if breakage == "missing":
        del sd["transformer.h.1.mlp.c_fc.bias"]
    elif breakage == "misshaped":
        sd["transformer.h.0.attn.c_attn.weight"] = sd["transformer.h.0.attn.c_attn.weight"].t().contiguous()
    elif breakage == "unexpected":
        sd["transformer.h.0.attn.rotary"] = torch.zeros(3)
    else:
        sd["lm_head.weight"] = torch.zeros(50, 16)
    with pytest.raises(ValueError, match=message):
        load_gpt2_state_dict(sd, n_head=4)


def test_gpt2_loader_rejects_non_gpt2():
    with pytest.raises(ValueError, match="no 'wte.weight'"):
        load_gpt2_state_dict({"embed.weight": torch.zeros(3, 4)}, n_head=1)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        load_gpt2_state_dict({"wte.weight": [[0.0]]}, n_head=1)


# ---------------------------------------------------------------- files, tokenizer, training

def test_tokenizer_round_trip_and_unknown_characters():
    text = load_text()
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == len(set(text))
    sample = text[1000:1300]
    assert tok.decode(tok.encode(sample)) == sample
    with pytest.raises(ValueError, match="'é' is not in"):
        tok.encode("café")


def test_heldout_prompts_come_from_the_last_tenth():
    text = load_text()
    train, val = split(text)
    assert len(val) == pytest.approx(0.1 * len(text), abs=2)
    for p in heldout_prompts(5, 40, seed=3):
        assert len(p) == 40 and p in val


def test_save_and_load_round_trip(tmp_path):
    model = tiny(5)
    tok = CharTokenizer("abcdefghijklmnopqrstuvw")
    path = save_model(model, tmp_path / "m.safetensors", tok, {"steps": 3, "device": "cpu"})
    info = read_metadata(path)
    assert info["config"] == model.config and info["tokenizer"].vocab == tok.vocab and info["training"]["steps"] == 3
    loaded, tok2 = load_model(path, dtype=torch.float32, device="cpu")
    x = torch.randint(0, 23, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=2e-2, atol=2e-2)  # weights stored in fp16
    assert next(iter(__import__("safetensors.torch", fromlist=["load_file"]).load_file(path).values())).dtype == torch.float16


def test_training_script_writes_loadable_models(tmp_path):
    from labkit.model import train

    text = tmp_path / "text.txt"
    text.write_text(load_text()[:20000])
    kw = dict(steps=2, time_budget=60, batch=2, seq=32, lr=1e-3, device="cpu", seed=0, eval_every=1,
              eval_batches=1, text_path=str(text))
    t_path = train.train("target", tmp_path, teacher_path=None, **kw)
    d_path = train.train("draft", tmp_path, teacher_path=str(t_path), **kw)
    for path, layers in ((t_path, 12), (d_path, 1)):
        model, _ = load_model(path, device="cpu")
        assert model.config.n_layers == layers
        info = read_metadata(path)["training"]
        assert info["steps"] == 2 and info["device"] == "cpu" and "date" in info and info["val_loss"] > 0
    assert read_metadata(d_path)["training"]["teacher"] == "target.safetensors"


def test_shipped_models():
    target, draft = (DATA_DIR / "models" / f"{n}.safetensors" for n in ("target", "draft"))
    assert target.exists() and draft.exists()
    t, d = read_metadata(target), read_metadata(draft)
    assert t["tokenizer"].vocab == d["tokenizer"].vocab == CharTokenizer.from_text(load_text()).vocab
    for info in (t, d):
        for key in ("steps", "val_loss", "date", "device"):
            assert key in info["training"], key
    assert t["training"]["params"] >= 10 * d["training"]["params"] * 0.95  # draft: about a tenth or less
    assert t["config"].n_layers >= 8 and d["config"].n_layers == 1
    from safetensors.torch import load_file
    assert all(v.dtype == torch.float16 for v in load_file(target).values())
    total = sum(f.stat().st_size for f in Path(DATA_DIR).rglob("*") if f.is_file())
    assert total < 25e6, f"data/ holds {total / 1e6:.1f} MB"
