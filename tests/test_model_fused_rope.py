"""The model decoding with RoPE fused into its cache write (FusedRopeKVCache), and notebook 04's text demo."""

from __future__ import annotations

import pytest
import torch

import labkit  # noqa: F401  (mode first)
import triton
import triton.language as tl

from labkit.decoding import generate
from labkit.kvcache import FusedRopeKVCache
from labkit.model import ModelConfig, Transformer, heldout_prompts, load_model
from labkit.rope.write import write_kv_rope_kernel


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def tiny(seed: int, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=23, d_model=40, n_layers=2, n_heads=4, max_len=96)  # head dim 10: no power of two
    cfg.update(kw)
    return Transformer(ModelConfig(**cfg)).eval()


class Counting:
    """A kernel stand-in that counts its launches and runs labkit's kernel."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


@pytest.mark.parametrize("kw", [dict(), dict(n_kv_heads=2)], ids=["mha", "gqa"])
def test_fused_cache_gives_the_unfused_logits_and_rotated_keys(kw):
    model = tiny(1, **kw)
    tokens = torch.randint(0, 23, (3, 24))
    with torch.no_grad():
        plain, fused = model.new_cache(3, 32), model.new_cache(3, 32, fused_rope=True)
        assert isinstance(fused, FusedRopeKVCache) and fused.fuses_rope and not plain.fuses_rope
        i = 0
        for s in (9, 1, 5, 1, 1, 7):  # prefill, decode steps, a verify-sized chunk
            torch.testing.assert_close(model(tokens[:, i:i + s], fused), model(tokens[:, i:i + s], plain),
                                       rtol=1e-4, atol=1e-5)
            i += s
    torch.testing.assert_close(fused.k[:, :, :, :i], plain.k[:, :, :, :i], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.v[:, :, :, :i], plain.v[:, :, :, :i], rtol=1e-5, atol=1e-6)
    assert torch.equal(fused.v[0, :, :, :i], plain.v[0, :, :, :i])  # layer 0's values: copied bit for bit


def test_fused_cache_rows_of_different_lengths():
    """Right-padded prefill, truncate per row, then batched decode: each token at its row's position."""
    model = tiny(2, n_kv_heads=2)
    lens = [3, 10, 6]
    seqs = [torch.randint(0, 23, (n + 4,)) for n in lens]
    padded = torch.zeros(3, max(lens), dtype=torch.long)
    for b, n in enumerate(lens):
        padded[b, :n] = seqs[b][:n]
    with torch.no_grad():
        cache = model.new_cache(3, 24, fused_rope=True)
        model(padded, cache)
        cache.truncate(lens)
        steps = [model(torch.stack([s[n + j] for s, n in zip(seqs, lens)])[:, None], cache) for j in range(4)]
        for b, n in enumerate(lens):
            torch.testing.assert_close(torch.cat(steps, 1)[b], model(seqs[b][None])[0, n:], rtol=1e-4, atol=1e-5)


def test_generate_launches_the_given_write_kernel_once_per_layer_and_pass():
    model = tiny(3)
    counting = Counting(write_kv_rope_kernel)
    out = generate(model, [1, 2, 3, 4, 5], 4, fused_rope=True, write_kernel=counting)
    assert counting.launches == model.config.n_layers * (1 + 4)  # the prefill, then one pass per token
    assert out.tokens == generate(model, [1, 2, 3, 4, 5], 4).tokens


def test_shipped_model_greedy_tokens_are_the_unfused_ones():
    draft, tok = load_model("draft")
    prompt = tok.encode(heldout_prompts(1, 40, seed=3)[0])
    assert generate(draft, prompt, 10, fused_rope=True).tokens == generate(draft, prompt, 10).tokens


def test_fused_rope_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="fused_rope=True needs a RoPE model"):
        tiny(4, position="learned").new_cache(1, 8, fused_rope=True)
    with pytest.raises(ValueError, match="pass it with fused_rope=True"):
        tiny(4).new_cache(1, 8, write_kernel=write_kv_rope_kernel)
    with pytest.raises(ValueError, match=r"rope_tables must be \(cos, sin\), each \[max_pos, 5\]"):
        FusedRopeKVCache(1, 1, 2, 10, 8, rope_tables=(torch.zeros(8, 4), torch.zeros(8, 4)))


# --- notebook 04's demo -----------------------------------------------------------------------------
@triton.jit
def _stub_write_kernel(k_new_ptr, v_new_ptr, k_cache_ptr, v_cache_ptr, rows_ptr, slots_ptr, pos_ptr, cos_ptr, sin_ptr,
                       sizes, limits, new_strides, cache_strides, ROPE: tl.constexpr, BLOCK_H: tl.constexpr,
                       BLOCK_HALF: tl.constexpr):
    raise NotImplementedError("Exercise 04.write_kv_rope: your code here")


@triton.jit
def _unrotated_write_kernel(k_new_ptr, v_new_ptr, k_cache_ptr, v_cache_ptr, rows_ptr, slots_ptr, pos_ptr, cos_ptr,
                            sin_ptr, sizes, limits, new_strides, cache_strides, ROPE: tl.constexpr,
                            BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    # A plausible mistake: keys and values copied to their slots, the keys never rotated.
    H, D, HALF = sizes
    num_rows, num_slots, max_pos = limits
    s_n, s_h = new_strides
    s_r, s_ch, s_s = cache_strides
    n = tl.program_id(0)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.arange(0, 2 * BLOCK_HALF)
    row = tl.load(rows_ptr + n).to(tl.int64)
    slot = tl.load(slots_ptr + n).to(tl.int64)
    mask = (heads[:, None] < H) & (cols[None, :] < D) & (row < num_rows) & (slot < num_slots)
    src = n * s_n + heads[:, None] * s_h + cols[None, :]
    dst = row * s_r + heads[:, None] * s_ch + slot * s_s + cols[None, :]
    tl.store(k_cache_ptr + dst, tl.load(k_new_ptr + src, mask=mask), mask=mask)
    tl.store(v_cache_ptr + dst, tl.load(v_new_ptr + src, mask=mask), mask=mask)


@pytest.mark.parametrize("kernel, said, yours", [
    (write_kv_rope_kernel, "using your fused cache write (04.write_kv_rope)", True),
    (_stub_write_kernel, "is not finished (NotImplementedError) — using labkit's", False),
    (_unrotated_write_kernel, "gives a wrong result on a tiny input (keys not rotated", False),
])
def test_text_demo_runs_the_given_kernel_or_says_it_falls_back(kernel, said, yours, capsys):
    from labkit.rope.demo import generate_with_write_kernel

    demo = generate_with_write_kernel(kernel, model="draft", max_new_tokens=5)
    assert said in capsys.readouterr().out
    assert demo.yours is yours and demo.matches and len(demo.tokens) == 5 and demo.text
