"""The Triton decode engine (labkit.decoding.triton_engine): its passes compute the model's
function, its greedy decoders give generate()'s tokens, its verification pass keeps exactly
the agreeing prefix, bad models are refused by name, and its kernels compile for the T4."""

from __future__ import annotations

import pytest
import torch

from labkit.decoding import generate
from labkit.decoding.fast import PlainDecoder, SpeculativeDecoder, fast_generate, fast_speculative_generate
from labkit.decoding.triton_engine import BLOCK_S, TritonEngine
from labkit.model.config import ModelConfig
from labkit.model.transformer import Transformer

V = 11


def _model(layers: int, seed: int, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=V, d_model=64, n_layers=layers, n_heads=2, d_ff=48, max_len=96, **kw)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)  # large weights: distinct argmaxes, so a wrong kernel changes tokens
    return m


@pytest.fixture(scope="module")
def target():
    return _model(2, 0)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("S", [1, 5])
def test_pass_matches_the_model(norm, S):
    m = _model(2, 3, norm=norm)
    tokens = torch.randint(0, V, (30,), generator=torch.Generator().manual_seed(S))
    with torch.no_grad():
        want = m(tokens[None])[0].double()
    e = TritonEngine(m, 40)
    e.logits.fill_(float("nan"))  # poisoned: every row it returns must be written
    seq = torch.zeros(48, dtype=torch.long)
    seq[:30] = tokens
    e.prefill(seq[:20])  # positions 0 .. 19 through the PyTorch pass
    n = torch.tensor(21)
    got = e.run_pass(seq, n, -1, S).double()  # positions 20 .. 20 + S - 1
    err = (got - want[20:20 + S]).abs().max() / want[20:20 + S].abs().max()
    assert err < 1e-5
    assert int(seq[20 + S]) == int(want[20 + S - 1].argmax())  # the last row's argmax, written after the pass
    assert int(n) == 21  # not advanced: neither advance nor counts


def test_logits_at_is_a_pass_after_a_prefill(target):
    tokens = torch.randint(0, V, (30,), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        want = target(tokens[None])[0].double()
    got = TritonEngine(target, 40).logits_at(tokens, 24, 6).double()
    assert (got - want[24:30]).abs().max() / want[24:30].abs().max() < 1e-5
    with pytest.raises(ValueError, match="start"):
        TritonEngine(target, 40).logits_at(tokens, 0, 3)


def test_plain_greedy_equals_generate(target):
    prompt = [3, 1, 4, 1, 5, 9, 2]
    want = generate(target, prompt, 9).tokens
    assert fast_generate(target, prompt, 9, engine="triton", steps_per_graph=3).tokens == want


def test_speculative_greedy_equals_generate(target):
    prompt = [2, 7, 1, 8, 2, 8]
    want = generate(target, prompt, 8).tokens
    draft = _model(1, 5)
    assert fast_speculative_generate(target, draft, prompt, 8, gamma=3, engine="triton").tokens == want
    # the target as its own draft: every token accepted, the bonus token each round
    r = fast_speculative_generate(target, target, prompt, 8, gamma=3, engine="triton")
    assert r.tokens == want
    assert r.target_passes == 2 and r.accepted == 6


def test_verification_keeps_the_agreeing_prefix_and_one_more(target):
    e = TritonEngine(target, 40)
    dec = SpeculativeDecoder(e, e, 4)
    prompt = torch.tensor([4, 4, 2, 0, 9, 6, 1, 3])
    with torch.no_grad():
        greedy = generate(target, prompt.tolist(), 5).tokens  # what the target would say at n .. n+4
    for agree in range(5):  # the first `agree` draft tokens right, then a wrong one
        seq, n = dec.seq, dec.n
        seq.zero_()
        seq[:8] = prompt
        n.fill_(8)
        dec.counts.zero_()
        e.prefill(seq[:7])
        drafts = list(greedy[:4])
        if agree < 4:
            drafts[agree] = (drafts[agree] + 1) % V
        seq[8:12] = torch.tensor(drafts)
        e.run_pass(seq, n, -1, 5, counts=dec.counts)
        keep = agree + 1
        assert int(n) == 8 + keep
        assert seq[8:8 + keep].tolist() == greedy[:keep]  # the target's tokens, the correction last
        assert dec.counts.tolist()[keep] == 1 and int(dec.counts.sum()) == 1


@pytest.mark.parametrize("change, words", [
    (dict(bias=True), "bias=False"),
    (dict(activation="gelu"), "gelu_tanh"),
    (dict(n_heads=4), "head_dim a power of two >= 32"),
    (dict(d_ff=40), "d_ff a multiple of 16"),
])
def test_unsupported_models_are_refused_by_name(change, words):
    cfg = ModelConfig(vocab_size=V, d_model=64, n_layers=1, n_heads=2, d_ff=48, max_len=64).with_(**change)
    with pytest.raises(ValueError, match=words):
        TritonEngine(Transformer(cfg), 32)


def test_gamma_is_bounded_by_the_tile(target):
    e = TritonEngine(target, 40)
    with pytest.raises(ValueError, match=f"at most {BLOCK_S - 1}"):
        SpeculativeDecoder(e, e, BLOCK_S)
    # sampling runs the PyTorch pass: any gamma
    assert not SpeculativeDecoder(e, e, BLOCK_S, temperature=1.0).fused
    assert PlainDecoder(e).fused and not PlainDecoder(e, temperature=0.5).fused


def test_kernels_compile_for_sm75_within_64kb_shared():
    from labkit.decoding.triton_layers import _attention_block_kernel, _head_kernel, _mlp_down_kernel, _mlp_up_kernel
    from labkit.testing import compile_triton_many_for_t4

    def sig(names, dtype):
        kinds = {"seq": "*i64", "n": "*i64", "counts": "*i64", "cos": "*fp32", "sin": "*fp32", "logits": "*fp32",
                 "offset": "i32", "s": "i32", "v": "i32", "qk_scale": "fp32", "eps": "fp32"}
        return {name: kinds.get(name.lower(), f"*{dtype}") for name in names}

    from labkit.decoding.triton_engine import tiles
    from labkit.model.config import preset

    requests = []
    for dtype, torch_dtype in (("fp16", torch.float16), ("fp32", torch.float32)):  # the shipped target's shape
        t = tiles(preset("target", 65), torch_dtype)
        norm = dict(RMS=False, NORM_BIAS=False)
        requests += [
            (_attention_block_kernel, sig(["X", "Seq", "N", "Embed", "NormW", "NormB", "Wqkv", "Cos", "Sin", "KV", "O",
                                           "offset", "S", "qk_scale", "eps"], dtype),
             dict(H=4, D=64, DM=256, BLOCK_S=BLOCK_S, BLOCK_T=32, FIRST=True, **norm), 4),
            (_mlp_up_kernel, sig(["X", "O", "X2", "U", "Wproj", "NormW", "NormB", "Wfc", "S", "eps"], dtype),
             dict(DM=256, F=768, BLOCK_S=BLOCK_S, BLOCK_F=t["BLOCK_F"], BLOCK_K=t["BLOCK_K_PROJ"], **norm), 4),
            (_mlp_down_kernel, sig(["X2", "U", "Wproj", "X", "S"], dtype),
             dict(F=768, DM=256, BLOCK_S=BLOCK_S, BLOCK_N=t["BLOCK_N"], BLOCK_K=t["BLOCK_K_DOWN"]), 4),
            (_head_kernel, sig(["X", "NormW", "NormB", "Head", "Logits", "Seq", "N", "Counts", "offset", "S", "V", "eps"],
                               dtype),
             dict(DM=256, BLOCK_S=BLOCK_S, BLOCK_V=t["BLOCK_V"], ADVANCE=False, VERIFY=True, **norm), 4),
        ]
    builds = compile_triton_many_for_t4(requests, num_stages=1)
    assert len(builds) == 8
    assert all(b.cubin_bytes > 0 and b.shared_bytes <= 64 * 1024 for b in builds)
