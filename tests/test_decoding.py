"""Sampling, generation and speculative decoding (sim mode, CPU).

The statistical tests use seeded generators (deterministic) and Pearson's chi-square test;
each also shows it has the power to fail by rejecting a deliberately wrong rule.
"""

from __future__ import annotations

import pytest
import torch

import labkit  # noqa: F401  (mode first)
from labkit.decoding import (accept_draft, chi_square, counts_of, expected_tokens_per_pass, generate, probs,
                             sample, speculative_generate, speculative_round)
from labkit.model import ModelConfig, Transformer, heldout_prompts, load_model

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


ACCEPT_P = 1e-3  # a correct sampler passes at this p-value ...
REJECT_P = 1e-8  # ... a wrong one must fall far below it


def model_pair(vocab=13, seed=1, noise=0.2):
    """A random target and a draft that is the target plus noise: it agrees often, not always."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, max_len=128, tied_embeddings=False)
    target, draft = Transformer(cfg).eval(), Transformer(cfg).eval()
    with torch.no_grad():
        for p in target.parameters():
            p.mul_(5.0)  # peakier distributions, less repetitive greedy text
        draft.load_state_dict(target.state_dict())
        for p in draft.parameters():
            p.add_(noise * p.std() * torch.randn_like(p))
    return target, draft


# ---------------------------------------------------------------- sampling

def test_probs_greedy_temperature_top_k_top_p():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 3.0]])
    onehot = probs(logits, 0.0)
    assert onehot.tolist() == [[0, 0, 0, 0, 1.0]]
    torch.testing.assert_close(probs(logits, 2.0), torch.softmax(logits / 2, -1))
    k2 = probs(logits, 1.0, top_k=2)
    assert (k2[0, [1, 2, 3]] == 0).all()
    torch.testing.assert_close(k2[0, [0, 4]], torch.softmax(logits[0, [0, 4]], -1))
    full = torch.softmax(logits, -1)[0]  # sorted: 4 (.61), 0 (.22), 1 (.08), 2 (.05), 3 (.01)
    p6 = probs(logits, 1.0, top_p=0.7)  # 0.61 < 0.7: needs token 0 as well
    assert set(p6.nonzero()[:, 1].tolist()) == {0, 4}
    torch.testing.assert_close(p6[0, [0, 4]], full[[0, 4]] / full[[0, 4]].sum())
    assert probs(logits, 1.0, top_p=0.5).nonzero()[:, 1].tolist() == [4]  # at least the top token
    with pytest.raises(ValueError, match="temperature"):
        probs(logits, -1.0)
    with pytest.raises(ValueError, match="top_p"):
        probs(logits, 1.0, top_p=0.0)


def test_sample_draws_from_the_weights():
    g = torch.Generator().manual_seed(0)
    w = torch.tensor([0.5, 0.0, 2.0, 1.0, 0.25, 0.0])  # unnormalised, with zeros
    draws = sample(w.expand(40000, 6), g)
    assert chi_square(counts_of(draws, 6), w)[2] > ACCEPT_P
    assert chi_square(counts_of(draws, 6), torch.ones(6))[2] < REJECT_P  # the test can fail


def test_chi_square_tail_holds_at_the_checks_sizes():
    """Notebook 06's checks draw 256 tokens from skewed distributions: here a dozen rare tokens,
    each expected 5.5 times, beside a common one. Pooled below 5 expected draws (the textbook
    rule), Pearson's approximation gives p <= 1e-3 twice as often as it should; pooled below 20
    (the default), no more often. 20,000 exact multinomial samples, seeded."""
    w = torch.tensor([5.5] * 12 + [190.0], dtype=torch.float64) / 256
    g = torch.Generator().manual_seed(3)
    draws = torch.multinomial(w, 20000 * 256, replacement=True, generator=g)
    counts = torch.nn.functional.one_hot(draws, 13).view(20000, 256, 13).sum(1)
    low = {me: sum(chi_square(c, w, min_expected=me)[2] <= 1e-3 for c in counts) / 20000 for me in (5.0, 20.0)}
    assert low[20.0] < 1.5e-3, low  # nominal: 1e-3
    assert low[5.0] > 1.5e-3, low  # the reason for the default


def test_nb06_statistical_properties_fail_only_when_fresh_draws_confirm():
    from labkit.checks.nb06 import _expect_distribution

    w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    good = [0] * 500 + [1] * 300 + [2] * 200
    bad = [0] * 1000
    redraws = []

    def redraw(tokens):
        return lambda: redraws.append(1) or tokens

    _expect_distribution(good, w, "good", redraw(bad))
    assert not redraws  # a clear pass draws nothing more
    _expect_distribution(bad, w, "unlucky", redraw(good))  # a low p-value, not confirmed
    assert len(redraws) == 1
    with pytest.raises(AssertionError, match=r"p-values .* then .* on fresh draws"):
        _expect_distribution(bad, w, "wrong", redraw(bad))


# ---------------------------------------------------------------- the acceptance rule

def always_accept(p, q, d, g=None):
    n = torch.full(d.shape[:-1], d.shape[-1], dtype=torch.long)
    return n, sample(p[..., -1, :], g)


def ratio_upside_down(p, q, d, g=None):
    """min(1, q/p): the wrong way round."""
    return accept_draft(q_like_p(p, q), p[..., :-1, :].clone(), d, g)


def q_like_p(p, q):
    return torch.cat([q, p[..., -1:, :]], dim=-2)


def resample_from_p(p, q, d, g=None):
    """Right acceptance test, but a rejection resamples from p instead of max(0, p - q)."""
    n, _ = accept_draft(p, q, d, g)
    idx = n[..., None, None].expand(*n.shape, 1, p.shape[-1])
    return n, sample(p.gather(-2, idx).squeeze(-2), g)


def emitted(rule, p, q, trials, g):
    """Run ``rule`` on ``trials`` independent rounds; return (first tokens, second tokens where emitted)."""
    gamma, V = q.shape
    d = sample(q.expand(trials, gamma, V), g)
    n, nxt = rule(p.expand(trials, gamma + 1, V), q.expand(trials, gamma, V), d, g)
    first = torch.where(n > 0, d[:, 0], nxt)
    two = n > 0
    second = torch.where(n[two] > 1, d[two][:, min(1, gamma - 1)], nxt[two])  # γ = 1: always the bonus
    return first, second


def random_pair(V, gamma, g, sparse=False):
    p = torch.softmax(2 * torch.randn(gamma + 1, V, generator=g), -1)
    q = torch.softmax(2 * torch.randn(gamma, V, generator=g), -1)
    if sparse:  # top-k-like supports that only partly overlap
        p[:, : V // 3] = 0
        q[:, -(V // 3):] = 0
        p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    return p, q


@pytest.mark.parametrize("V, gamma, sparse", [(2, 1, False), (5, 3, False), (9, 4, True)])
def test_speculative_sampling_draws_from_the_target(V, gamma, sparse):
    g = torch.Generator().manual_seed(V * 10 + gamma)
    p, q = random_pair(V, gamma, g, sparse)
    first, second = emitted(accept_draft, p, q, 30000, g)
    assert chi_square(counts_of(first, V), p[0])[2] > ACCEPT_P
    assert chi_square(counts_of(second, V), p[1])[2] > ACCEPT_P


@pytest.mark.parametrize("wrong", [always_accept, ratio_upside_down, resample_from_p])
def test_the_same_test_rejects_a_wrong_rule(wrong):
    g = torch.Generator().manual_seed(7)
    p, q = random_pair(5, 3, g)
    first, _ = emitted(wrong, p, q, 30000, g)
    assert chi_square(counts_of(first, 5), p[0])[2] < REJECT_P


def test_rule_exact_properties():
    g = torch.Generator().manual_seed(1)
    p, _ = random_pair(7, 3, g)
    d = sample(p[:3].expand(500, 3, 7), g)
    n, _ = accept_draft(p.expand(500, 4, 7), p[:3].expand(500, 3, 7), d, g)
    assert (n == 3).all()  # q == p: every draft token is accepted
    p0 = p.clone()
    p0[0, 2] = 0
    p0[0] /= p0[0].sum()
    n, nxt = accept_draft(p0.expand(500, 4, 7), p[:3].expand(500, 3, 7), torch.full((500, 3), 2), g)
    assert (n == 0).all() and (nxt != 2).all()  # p(d) = 0: always rejected, never resampled
    onehot_p, onehot_q = probs(torch.randn(4, 7), 0.0), probs(torch.randn(3, 7), 0.0)
    d = onehot_q.argmax(-1)
    n, nxt = accept_draft(onehot_p, onehot_q, d, g)  # greedy: the matching prefix, then the argmax
    agree = (onehot_p[:3].argmax(-1) == d).long().cumprod(0).sum()
    assert int(n) == int(agree) and int(nxt) == int(onehot_p[int(agree)].argmax())


def test_expected_tokens_per_pass():
    assert expected_tokens_per_pass(0.0, 4) == 1
    assert expected_tokens_per_pass(1.0, 4) == 5
    assert expected_tokens_per_pass(0.8, 4) == pytest.approx(sum(0.8 ** i for i in range(5)))


# ---------------------------------------------------------------- generation with the models

@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_greedy_speculative_equals_greedy_target(gamma):
    target, draft = model_pair()
    prompt = torch.randint(0, 13, (1, 6), generator=torch.Generator().manual_seed(gamma))
    plain = generate(target, prompt, 40)
    spec = speculative_generate(target, draft, prompt, 40, gamma=gamma)
    assert spec.tokens == plain.tokens
    assert 0 < spec.alpha < 1  # both acceptances and rejections happened
    assert spec.target_passes < 40 and 1 <= spec.tokens_per_pass <= gamma + 1


def test_speculative_round_keeps_caches_at_the_accepted_length():
    target, draft = model_pair(seed=4)
    prompt = torch.randint(0, 13, (1, 5), generator=torch.Generator().manual_seed(0))
    plain = generate(target, prompt, 30)
    tcache, dcache = target.new_cache(1, 64), draft.new_cache(1, 64)
    with torch.no_grad():
        target(prompt[:, :-1], tcache)
        draft(prompt[:, :-1], dcache)
    tokens, last, counts = [], prompt[:, -1:], set()
    while len(tokens) < 30:
        new, n = speculative_round(target, draft, tcache, dcache, last, 3)
        assert len(new) == n + 1 and 0 <= n <= 3
        counts.add(n)
        tokens += new
        last = torch.tensor([new[-1:]])
        assert tcache.host_lengths() == dcache.host_lengths() == [5 + len(tokens) - 1]
    assert tokens[:30] == plain.tokens and len(counts) > 1


def test_identical_draft_is_always_accepted_when_sampling():
    target, _ = model_pair(seed=2)
    g = torch.Generator().manual_seed(0)
    spec = speculative_generate(target, target, [1, 2, 3], 24, gamma=3, temperature=1.0, generator=g)
    assert spec.alpha == 1.0 and spec.tokens_per_pass == 4.0 and len(spec.tokens) == 24


def test_model_level_sampling_follows_the_target():
    """Whole rounds with the models and caches: the round's first token follows the target's p."""
    target, draft = model_pair(vocab=5, seed=3, noise=1.0)
    g = torch.Generator().manual_seed(0)
    prompt = torch.tensor([[1, 4, 2, 0]])
    tcache, dcache = target.new_cache(1, 16), draft.new_cache(1, 16)
    with torch.no_grad():
        target(prompt[:, :-1], tcache)
        draft(prompt[:, :-1], dcache)
        p = probs(target(prompt)[0, -1], 2.0)
        q = probs(draft(prompt)[0, -1], 2.0)
    firsts = []
    for _ in range(300):
        new, _ = speculative_round(target, draft, tcache, dcache, prompt[:, -1:], 1, temperature=2.0, generator=g)
        firsts.append(new[0])
        tcache.truncate(3)
        dcache.truncate(3)
    assert chi_square(counts_of(firsts, 5), p)[2] > ACCEPT_P
    assert chi_square(counts_of(firsts, 5), q)[2] < ACCEPT_P  # what the draft alone would give


def test_top_k_sampling_stays_in_the_top_k():
    target, draft = model_pair(seed=4)
    g = torch.Generator().manual_seed(0)
    out = speculative_generate(target, draft, [3, 1], 20, gamma=2, temperature=1.0, top_k=1, generator=g)
    assert out.tokens == generate(target, [3, 1], 20).tokens  # top-1 sampling is greedy


def test_real_models_first_token_distribution():
    """The shipped models' next-token distributions on held-out prompts: right rule accepted, wrong rejected."""
    target, tok = load_model("target", dtype=torch.float32, device="cpu")
    draft, _ = load_model("draft", dtype=torch.float32, device="cpu")
    g = torch.Generator().manual_seed(0)
    pairs = []
    with torch.no_grad():
        for text in heldout_prompts(12, 48, seed=11):
            x = tok.encode_tensor(text)
            pairs.append((probs(target(x)[0, -1], 1.0), probs(draft(x)[0, -1], 1.0)))
    p, q = max(pairs, key=lambda pq: (pq[0] - pq[1]).abs().sum())  # the prompt where they differ most
    V = p.numel()
    p2 = torch.stack([p, torch.full_like(p, 1 / V)])
    first, _ = emitted(accept_draft, p2, q[None], 40000, g)
    assert chi_square(counts_of(first, V), p)[2] > ACCEPT_P
    assert (p - q).abs().sum() > 0.1  # the models differ enough for 40000 draws to see it
    wrong, _ = emitted(always_accept, p2, q[None], 40000, g)
    assert chi_square(counts_of(wrong, V), p)[2] < REJECT_P


# ---------------------------------------------------------------- the fused fast path (labkit.decoding.fast)

def test_engine_pass_equals_the_model():
    """StaticEngine's pass (token-major cache, RoPE as rotations, layer-0 table) == the model's full pass."""
    from labkit.decoding.engine import StaticEngine

    for tied in (False, True):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=11, d_model=32, n_layers=2, n_heads=4, max_len=64, tied_embeddings=tied,
                          norm="layernorm" if tied else "rmsnorm")
        model = Transformer(cfg).eval()
        x = torch.randint(0, 11, (1, 23))
        with torch.no_grad():
            full = model(x)[0]
        for linear in ("mm", "bmv", "lt"):
            e = StaticEngine(model, 30, linear=linear)
            assert e.T == 32  # a multiple of 16
            pieces, i = [], 0
            for S in (9, 1, 5, 2, 1, 5):
                pos = torch.arange(i, i + S)
                pieces.append(e.forward(x[0, i:i + S], pos, *e.tables(pos)))
                i += S
            torch.testing.assert_close(torch.cat(pieces), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gamma, K, linear", [(1, 1, "mm"), (3, 3, "bmv"), (5, 8, "mm")])
def test_fast_greedy_equals_generate(gamma, K, linear):
    from labkit.decoding.fast import fast_generate, fast_speculative_generate

    target, draft = model_pair()
    prompt = torch.randint(0, 13, (1, 6), generator=torch.Generator().manual_seed(gamma))
    want = generate(target, prompt, 40)
    assert fast_generate(target, prompt, 40, steps_per_graph=K).tokens == want.tokens
    spec = fast_speculative_generate(target, draft, prompt, 40, gamma=gamma, linear=linear)
    assert spec.tokens == want.tokens
    assert 0 < spec.alpha < 1 and 1 <= spec.tokens_per_pass <= gamma + 1 and spec.produced >= 40
    assert spec.evaluated <= spec.proposed == gamma * spec.target_passes


def test_fast_identical_draft_and_statistics():
    from labkit.decoding.fast import fast_speculative_generate

    target, _ = model_pair(seed=2)
    torch.manual_seed(0)
    spec = fast_speculative_generate(target, target, [1, 2, 3], 24, gamma=3, temperature=1.0)
    assert spec.alpha == 1.0 and spec.tokens_per_pass == 4.0 and len(spec.tokens) == 24
    real, tok = load_model("target", dtype=torch.float32, device="cpu")
    draft, _ = load_model("draft", dtype=torch.float32, device="cpu")
    p = tok.encode(heldout_prompts(1, 48, seed=3)[0])
    ref = speculative_generate(real, draft, p, 48, gamma=4)
    fast = fast_speculative_generate(real, draft, p, 48, gamma=4)
    assert fast.tokens == ref.tokens == generate(real, p, 48).tokens
    assert abs(fast.alpha - ref.alpha) < 0.15  # the same draft; only the round boundaries differ


def test_fast_sampling_follows_the_target():
    """Whole fused rounds (graph-shaped, device acceptance): the first token follows the target's p."""
    from labkit.decoding.engine import StaticEngine
    from labkit.decoding.fast import SpeculativeDecoder

    target, draft = model_pair(vocab=5, seed=3, noise=1.0)
    prompt = torch.tensor([[1, 4, 2, 0]])
    with torch.no_grad():
        p = probs(target(prompt)[0, -1], 2.0)
        q = probs(draft(prompt)[0, -1], 2.0)
    dec = SpeculativeDecoder(StaticEngine(target, 16), StaticEngine(draft, 16), 2, temperature=2.0)
    torch.manual_seed(0)
    firsts = dec.first_tokens(prompt, 300)
    assert chi_square(counts_of(firsts, 5), p)[2] > ACCEPT_P
    assert chi_square(counts_of(firsts, 5), q)[2] < ACCEPT_P


def test_fast_path_rejects_bad_input():
    from labkit.decoding.engine import StaticEngine
    from labkit.decoding.fast import PlainDecoder, fast_speculative_generate

    target, draft = model_pair()
    with pytest.raises(ValueError, match="at least 2 tokens"):
        fast_speculative_generate(target, draft, [3], 5)
    with pytest.raises(ValueError, match="max_len"):
        PlainDecoder(StaticEngine(target, 16)).run([1, 2], 20)
    with pytest.raises(ValueError, match="linear"):
        StaticEngine(target, 16, linear="gemv")
    with pytest.raises(ValueError, match="RoPE"):
        StaticEngine(Transformer(ModelConfig(vocab_size=7, d_model=16, n_layers=1, n_heads=2, position="learned")), 8)
    other = Transformer(ModelConfig(vocab_size=9, d_model=32, n_layers=1, n_heads=4, max_len=128))
    with pytest.raises(ValueError, match="vocabulary"):
        fast_speculative_generate(target, other, [1, 2], 5)


# ---------------------------------------------------------------- notebook 06's checks

def test_nb06_checks_pass_labkit_and_fail_wrong_answers(capsys):
    from labkit import checks
    from labkit.checks.core import CheckFailure

    for check, labkits in ((checks.nb06.check_accept, accept_draft), (checks.nb06.check_round, speculative_round)):
        with pytest.raises(CheckFailure, match="labkit's own"):
            check(labkits)
    checks.nb06.check_accept(lambda *a, **k: accept_draft(*a, **k))  # the check sees a function of the student's
    checks.nb06.check_round(lambda *a, **k: speculative_round(*a, **k))

    def always(p, q, d, g=None):
        return q.shape[0], int(sample(p[-1], g))

    def ratio_wrong_way(p, q, d, g=None):
        n, nxt = accept_draft(torch.cat([q, p[-1:]]), p[:-1].clone(), d, g)
        return int(n), int(nxt)

    def no_rollback(target, draft, tc, dc, last, gamma, **kw):
        tc_len = tc.host_lengths()[0]
        new, n = speculative_round(target, draft, tc, dc, last, gamma, **kw)
        tc.truncate(tc_len + 1)  # forgets the accepted tokens in the target's cache
        return new, n

    def unstarted(*args, **kwargs):
        raise NotImplementedError("06.round: write your solution here")

    for check, wrong in ((checks.nb06.check_accept, always), (checks.nb06.check_accept, ratio_wrong_way),
                         (checks.nb06.check_round, no_rollback), (checks.nb06.check_round, unstarted)):
        with pytest.raises(CheckFailure):
            check(wrong)
    out = capsys.readouterr().out
    assert "06.accept: all 7 properties pass" in out and "06.round: all 5 properties pass" in out
