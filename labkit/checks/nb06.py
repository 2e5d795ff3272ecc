"""Checks for notebook 06: the speculative acceptance rule, one verify round, and a top-p sampling kernel.

Statistical properties draw fresh inputs and use Pearson's chi-square test
(:func:`labkit.decoding.stats.chi_square`). A property fails only when two independent sets of
draws both give p <= 1e-3: a correct answer fails one of a check's dozen such tests about once
in 50,000 runs (each about once in a million), while a wrong rule (always accept, min(1, q/p),
resampling from p instead of max(0, p − q), a sampler that ignores the logits or top-p) gives
p-values near 0 on every draw and fails essentially always.
"""

from __future__ import annotations

import contextlib
import random

import torch

from labkit.checks._guard import reject_labkit
from labkit.checks.core import assert_equal, fresh_seed, launch_kernel, run_check
from labkit.decoding.generate import generate
from labkit.decoding.sampling import probs as next_token_probs
from labkit.decoding.sampling import sample
from labkit.decoding.stats import chi_square, counts_of
from labkit.model.config import ModelConfig
from labkit.model.transformer import Transformer

P_VALUE = 1e-3  # per set of draws; a property fails when two sets in a row fall below it


@contextlib.contextmanager
def _one_thread():
    # Tiny models on the CPU: one thread beats two, by 10x when other processes (a grader
    # running notebooks in parallel) keep the cores busy and OpenMP threads wait on each other.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _as_int(x, what: str) -> int:
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise AssertionError(f"{what} must be one number, got a tensor of shape {list(x.shape)}")
        x = x.item()
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    if not isinstance(x, int):
        raise AssertionError(f"{what} must be an int (or a one-element tensor), got {type(x).__name__}")
    return x


def _random_pq(g: torch.Generator, V: int, gamma: int, spread: float = 2.0):
    p = torch.softmax(spread * torch.randn(gamma + 1, V, generator=g), -1)
    q = torch.softmax(spread * torch.randn(gamma, V, generator=g), -1)
    return p, q


def _call(fn, p, q, d, g, gamma, V):
    n, nxt = fn(p, q, d, g)
    n, nxt = _as_int(n, "n_accepted"), _as_int(nxt, "next_token")
    if not 0 <= n <= gamma:
        raise AssertionError(f"n_accepted = {n}; expected 0 ≤ n_accepted ≤ gamma = {gamma}")
    if not 0 <= nxt < V:
        raise AssertionError(f"next_token = {nxt}; expected a token id in [0, {V})")
    return n, nxt


def _emitted(fn, p, q, g, trials: int):
    gamma, V = q.shape
    first, second = [], []
    for _ in range(trials):
        d = sample(q, g)
        n, nxt = _call(fn, p, q, d, g, gamma, V)
        seq = d[:n].tolist() + [nxt]
        first.append(seq[0])
        if len(seq) > 1:
            second.append(seq[1])
    return first, second


def _expect_distribution(tokens, dist, what: str, redraw) -> None:
    """``tokens`` should follow ``dist`` [V]; ``redraw()`` gives a fresh list of as many. A low
    p-value by chance is rare, two in a row far rarer: only the fresh draws confirm a failure."""
    pvalues = [chi_square(counts_of(tokens, dist.numel()), dist)[2]]
    if pvalues[0] > P_VALUE:
        return
    tokens = redraw()
    pvalues.append(chi_square(counts_of(tokens, dist.numel()), dist)[2])
    if pvalues[1] > P_VALUE:
        return
    counts = counts_of(tokens, dist.numel()).double()
    raise AssertionError(
        f"{what}: chi-square p-values {pvalues[0]:.2g}, then {pvalues[1]:.2g} on fresh draws ({len(tokens)} each): "
        f"they do not follow the target's distribution\n"
        f"  observed frequencies {[round(x, 3) for x in (counts / counts.sum()).tolist()]}\n"
        f"  expected (target)    {[round(x, 3) for x in (dist / dist.sum()).tolist()]}")


def check_accept(fn) -> None:
    """``fn(p, q, draft_tokens, generator) -> (n_accepted, next_token)`` for one round.

    p: [γ+1, V] target distributions; q: [γ, V] draft distributions; draft_tokens: [γ] int64.
    """
    reject_labkit(fn, '06.accept', SOLUTIONS)
    rng = random.Random(fresh_seed())
    g = torch.Generator().manual_seed(rng.randrange(1 << 62))

    def in_range():
        for _ in range(10):
            gamma, V = rng.randint(1, 5), rng.randint(2, 9)
            p, q = _random_pq(g, V, gamma)
            _call(fn, p, q, sample(q, g), g, gamma, V)

    def same_distributions():
        gamma, V = rng.randint(2, 4), rng.randint(3, 8)
        p, _ = _random_pq(g, V, gamma)
        for _ in range(30):
            n, _ = _call(fn, p, p[:gamma].clone(), sample(p[:gamma], g), g, gamma, V)
            if n != gamma:
                raise AssertionError(f"with q == p every draft token must be accepted (min(1, p/q) = 1); "
                                     f"you accepted {n} of {gamma}")

    def impossible_token():
        gamma, V = 3, rng.randint(4, 8)
        p, q = _random_pq(g, V, gamma)
        bad = rng.randrange(V)
        p[0, bad] = 0.0
        p[0] /= p[0].sum()
        d = sample(q, g)
        d[0] = bad
        for _ in range(30):
            n, nxt = _call(fn, p, q, d, g, gamma, V)
            if n != 0:
                raise AssertionError(f"draft token {bad} has target probability 0 but was accepted (n_accepted = {n})")
            if nxt == bad:
                raise AssertionError(f"after rejecting token {bad} (p = 0) you emitted it anyway")

    def residual():
        gamma, V = 1, rng.randint(4, 7)
        p, q = _random_pq(g, V, gamma)
        bad = int(q[0].argmax())
        p[0, bad] = 0.0  # always rejected, so every next_token is a resample
        p[0] /= p[0].sum()
        d = torch.tensor([bad])
        res = (p[0] - q[0]).clamp_min(0)

        def draw():
            draws = [_call(fn, p, q, d, g, gamma, V)[1] for _ in range(1500)]
            outside = [t for t in set(draws) if res[t] == 0]
            if outside:
                raise AssertionError(f"resampled tokens {sorted(outside)} where p − q ≤ 0: a rejection must draw "
                                     f"from max(0, p − q), normalised")
            return draws

        _expect_distribution(draw(), res, "tokens drawn after a rejection vs norm(max(0, p − q))", draw)

    def greedy():
        for _ in range(10):
            gamma, V = rng.randint(1, 5), rng.randint(2, 6)
            p = next_token_probs(torch.randn(gamma + 1, V, generator=g), 0.0)
            q = next_token_probs(torch.randn(gamma, V, generator=g), 0.0)
            d = q.argmax(-1)
            n, nxt = _call(fn, p, q, d, g, gamma, V)
            want = int((p[:gamma].argmax(-1) == d).long().cumprod(0).sum())
            assert_equal(n, want, what="n_accepted with one-hot (greedy) p and q")
            assert_equal(nxt, int(p[want].argmax()), what="next_token with one-hot (greedy) p and q")

    p2, q2 = _random_pq(g, 5, 2, spread=1.5)
    shared = []  # one set of 2,500 rounds serves both properties first

    def emitted(position, fresh=False):
        if fresh:
            return _emitted(fn, p2, q2, g, 2500)[position]
        if not shared:
            shared.append(_emitted(fn, p2, q2, g, 2500))
        return shared[0][position]

    def first_token():
        _expect_distribution(emitted(0), p2[0], "first emitted token vs the target's p₁", lambda: emitted(0, True))

    def second_token():
        _expect_distribution(emitted(1), p2[1], "second emitted token vs the target's p₂", lambda: emitted(1, True))

    with _one_thread():
        run_check("06.accept", [
            ("returns 0 ≤ n_accepted ≤ gamma and a token id", in_range),
            ("q == p: every draft token is accepted", same_distributions),
            ("a token the target gives probability 0 is always rejected", impossible_token),
            ("a rejection resamples from max(0, p − q)", residual),
            ("greedy (one-hot p and q): the agreeing prefix, then the target's choice", greedy),
            ("first token follows the target's distribution (statistical)", first_token),
            ("second token follows the target's distribution (statistical)", second_token),
        ])


def _model_pair(seed: int, vocab: int, noise: float):
    """A random target and a draft equal to it plus noise: agrees often, not always."""
    # Seeded inside a fork: the checks that run after this one keep drawing fresh global inputs.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cfg = ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, max_len=128, tied_embeddings=False)
        target, draft = Transformer(cfg).eval(), Transformer(cfg).eval()
        with torch.no_grad():
            for p in target.parameters():
                p.mul_(5.0)
            draft.load_state_dict(target.state_dict())
            for p in draft.parameters():
                p.add_(noise * p.std() * torch.randn_like(p))
    return target, draft


def _prefilled(target, draft, prompt, max_len=96):
    tc, dc = target.new_cache(1, max_len), draft.new_cache(1, max_len)
    with torch.no_grad():
        target(prompt[:, :-1], tc)
        draft(prompt[:, :-1], dc)
    return tc, dc


def _rounds(fn, target, draft, prompt, n_tokens, gamma, **kw):
    """Run the student's rounds until ``n_tokens``; check lengths and cache state after each."""
    tc, dc = _prefilled(target, draft, prompt)
    tokens, last, accepted = [], prompt[:, -1:], []
    while len(tokens) < n_tokens:
        with torch.no_grad():
            new, n = fn(target, draft, tc, dc, last, gamma, **kw)
        new = [_as_int(t, "a new token") for t in new]
        n = _as_int(n, "n_accepted")
        if not 1 <= len(new) <= gamma + 1 or n != len(new) - 1:
            raise AssertionError(f"a round returned {len(new)} tokens with n_accepted = {n}; expected 1 to "
                                 f"gamma + 1 = {gamma + 1} tokens and n_accepted = len(new) − 1")
        tokens += new
        want = prompt.shape[1] + len(tokens) - 1
        for name, cache in (("target_cache", tc), ("draft_cache", dc)):
            if cache.host_lengths() != [want]:
                raise AssertionError(f"after a round {name} holds {cache.host_lengths()[0]} tokens; expected {want} "
                                     f"(every token of the sequence but the last)")
        accepted.append(n)
        last = torch.tensor([[new[-1]]])
    return tokens[:n_tokens], accepted


def check_round(fn) -> None:
    """``fn(target, draft, target_cache, draft_cache, last_token, gamma, *, temperature, generator)``
    -> (new_tokens, n_accepted): one round of speculative decoding."""
    reject_labkit(fn, '06.round', SOLUTIONS)
    seed = fresh_seed()
    rng = random.Random(seed)
    target, draft = _model_pair(seed % 1000, 13, 0.2)
    prompt = torch.randint(0, 13, (1, rng.randint(3, 8)), generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)

    def shapes_and_caches():
        _rounds(fn, target, draft, prompt, 12, 3, temperature=1.0, generator=g)

    def greedy(gamma):
        def prop():
            want = generate(target, prompt, 24).tokens
            got, _ = _rounds(fn, target, draft, prompt, 24, gamma, temperature=0.0, generator=g)
            assert_equal(torch.tensor(got), torch.tensor(want), what=f"greedy tokens at gamma = {gamma}")
        return prop

    def identical_draft():
        _, accepted = _rounds(fn, target, target, prompt, 16, 3, temperature=1.0, generator=g)
        if any(n != 3 for n in accepted):
            raise AssertionError(f"with draft == target every draft token must be accepted; rounds accepted {accepted}")

    def distribution():
        t5, d5 = _model_pair(seed % 1000 + 1, 5, 1.0)
        p5 = torch.tensor([[1, 4, 2, 0]])
        with torch.no_grad():
            p = next_token_probs(t5(p5)[0, -1], 2.0)
        tc, dc = _prefilled(t5, d5, p5)

        def draw():
            firsts = []
            for _ in range(250):
                with torch.no_grad():
                    new, _ = fn(t5, d5, tc, dc, p5[:, -1:], 1, temperature=2.0, generator=g)
                firsts.append(_as_int(new[0], "a new token"))
                tc.truncate(3)
                dc.truncate(3)
            return firsts

        _expect_distribution(draw(), p, "first token of a round vs the target's distribution", draw)

    with _one_thread():
        run_check("06.round", [
            ("1 to gamma + 1 tokens per round; caches hold all but the last token", shapes_and_caches),
            ("greedy rounds reproduce the target's greedy tokens (gamma = 3)", greedy(3)),
            ("gamma = 1 and gamma = 5 as well", lambda: (greedy(1)(), greedy(5)())),
            ("a draft identical to the target is always accepted", identical_draft),
            ("sampled tokens follow the target's distribution (statistical)", distribution),
        ])


# ---------------------------------------------------------------------------------------------
# 06.sample_kernel: top-p sampling in one Triton kernel, without a sort

SAMPLE_DRAWS = 256  # draws per row and launch: enough for the chi-square test at a few dozen tokens


def _launch_sampler(kernel, logits, temperature, top_p, seed):
    from labkit.decoding.sampling_launch import sample_top_p

    out = launch_kernel(sample_top_p, logits, temperature, top_p, seed, num_samples=SAMPLE_DRAWS, kernel=kernel)
    if out.dtype != torch.int64 or tuple(out.shape) != (logits.shape[0], SAMPLE_DRAWS):
        raise AssertionError(f"output {out.dtype} {list(out.shape)}; expected int64 {[logits.shape[0], SAMPLE_DRAWS]}")
    return out.cpu()


def _sampler_case(kernel, rng, *, V, B=2, temperature=1.0, top_p=0.8, scale=2.0, logits=None):
    device = __import__("labkit").runtime.device()
    if logits is None:
        g = torch.Generator().manual_seed(rng.randrange(2**31))
        logits = (torch.randn(B, V, generator=g) * scale).to(device)
    B, V = logits.shape
    want = next_token_probs(logits.float().cpu(), temperature, None, top_p).double()

    def draw_rows():
        draws = _launch_sampler(kernel, logits, temperature, top_p, rng.randrange(2**31))
        if ((draws < 0) | (draws >= V)).any():
            bad = draws[(draws < 0) | (draws >= V)][:5].tolist()
            raise AssertionError(f"token ids out of [0, {V}): {bad} (a draw never written is -1)")
        for b in range(B):
            support = want[b] > 0
            outside = sorted(set(draws[b][~support[draws[b]]].tolist()))
            if outside:
                raise AssertionError(f"row {b}: drew tokens outside the top-p set: {outside[:8]} (the set is "
                                     f"{support.nonzero().flatten().tolist()}, temperature {temperature}, "
                                     f"top_p {top_p})")
        return draws

    first = draw_rows()
    for b in range(B):
        _expect_distribution(first[b].tolist(), want[b], f"row {b} (V={V}, temperature {temperature}, top_p {top_p})",
                             lambda b=b: draw_rows()[b].tolist())


def check_sample_kernel(kernel) -> None:
    """``kernel``: a ``@triton.jit`` kernel with the signature of the notebook's ``top_p_kernel`` stub,
    launched by ``sample_top_p(logits, temperature, top_p, seed, num_samples=, kernel=)``.

    Each property draws fresh logits and 256 tokens per row; the tokens must lie in the top-p set
    and pass a chi-square test against the exact renormalised distribution (a row fails when its
    draws and a fresh set of 256 both give p <= 1e-3).
    """
    reject_labkit(kernel, "06.sample_kernel", SOLUTIONS)
    rng = random.Random(fresh_seed())
    device = __import__("labkit").runtime.device()

    def one_token_holds_top_p():
        logits = torch.full((1, 24), -4.0, device=device)
        hot = rng.randrange(24)
        logits[0, hot] = 6.0  # p(hot) ≈ 0.9995 > top_p: the nucleus is that one token
        draws = _launch_sampler(kernel, logits, 1.0, 0.9, rng.randrange(2**31))
        assert_equal(draws[0], torch.full((SAMPLE_DRAWS,), hot), what="draws when one token holds more than top_p")

    def banned_tokens():
        # A ban list (-inf logits) can fill whole tiles: the first half of the row (at 256 draws a
        # tile holds 32 tokens), and a fifth of the rest.
        V = rng.randint(70, 100)
        g = torch.Generator().manual_seed(rng.randrange(2**31))
        logits = torch.randn(2, V, generator=g) * 2
        logits[:, : V // 2] = float("-inf")
        logits[torch.rand(2, V, generator=g) < 0.2] = float("-inf")
        logits[:, -1] = 1.0  # at least one token allowed
        _sampler_case(kernel, rng, V=V, top_p=0.7, logits=logits.to(device))

    def seeds():
        # Logits of scale 1 over 20 tokens: no token holds 0.95 of the mass (at scale 2 one did in
        # 1 draw of 270, and then every seed draws that token 256 times).
        logits = torch.randn(1, 20, device=device)
        a = _launch_sampler(kernel, logits, 1.0, 0.95, 11)
        b = _launch_sampler(kernel, logits, 1.0, 0.95, 11)
        c = _launch_sampler(kernel, logits, 1.0, 0.95, 12)
        assert_equal(a, b, what="draws with the same seed")
        if torch.equal(a, c):
            raise AssertionError("a different seed gave the very same 256 draws: is the seed used?")

    with _one_thread():
        run_check("06.sample_kernel", [
            ("top_p = 1: the whole softmax", lambda: _sampler_case(kernel, rng, V=rng.randint(6, 14), top_p=1.0)),
            ("top-p: only the nucleus, renormalised", lambda: _sampler_case(kernel, rng, V=rng.randint(10, 30), top_p=0.7)),
            ("temperature 0.6 and 1.7", lambda: [_sampler_case(kernel, rng, V=16, temperature=t, top_p=0.85)
                                                 for t in (0.6, 1.7)]),
            ("V over several tiles, not a multiple of one", lambda: _sampler_case(kernel, rng, V=rng.randint(33, 61),
                                                                                   top_p=0.6, scale=1.0)),
            ("negative and large logits", lambda: _sampler_case(kernel, rng, V=12, top_p=0.8, scale=8.0)),
            ("banned tokens (-inf logits) filling whole tiles", banned_tokens),
            ("one token holds more than top_p", one_token_holds_top_p),
            ("the seed decides the draws", seeds),
        ])


# The labkit objects that implement each exercise: an answer that is one of them fails.
SOLUTIONS = {
    '06.accept': ('labkit.decoding.speculative:accept_draft', 'labkit.decoding:accept_draft'),
    '06.round': ('labkit.decoding.speculative:speculative_round', 'labkit.decoding.speculative:speculative_generate', 'labkit.decoding:speculative_generate'),
    '06.sample_kernel': ('labkit.decoding.sampling_bisect:top_p_sample_kernel', 'labkit.decoding.sampling_triton:top_k_top_p_sample_kernel'),
}
