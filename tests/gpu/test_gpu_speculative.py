"""Speculative decoding on a GPU (pytest -m gpu), on the course's trained models.

- the model's cached forward == full recompute (fp32, fp16; eager and CUDA-graph passes);
- greedy speculative output == greedy target output token for token on held-out prompts, in
  fp32: the reference loop and the fused fast path (plain and speculative, γ 2 … 6);
- speculative sampling draws from the target's distribution: the rule on the real models'
  first-token distributions (and a wrong rule rejected), whole reference rounds, and whole
  fused rounds replayed from their CUDA graph;
- the Triton engine: its passes against the model's forward (fp32, fp16), its greedy plain and
  speculative decoding against generate() (fp32).
Prompts and token counts as the GPU script that passed on the H200 (8 held-out prompts).
"""

from __future__ import annotations

import labkit  # noqa: F401  (decides the mode before numba and triton load)
import pytest
import torch

from labkit import runtime
from labkit.checks.core import rel_error
from labkit.decoding import (accept_draft, chi_square, counts_of, generate, probs, sample, speculative_generate,
                             speculative_round)
from labkit.decoding.engine import StaticEngine
from labkit.decoding.fast import PlainDecoder, SpeculativeDecoder
from labkit.decoding.triton_engine import TritonEngine
from labkit.decoding.graphs import Step
from labkit.model import heldout_prompts, load_model

DEV = runtime.device()
GPU = not runtime.is_sim()
GAMMAS = (2, 3, 4, 5, 6)


def first_difference(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def check_cache(target, tok, prompts) -> list[str]:
    failures, dtype0 = [], next(target.parameters()).dtype
    for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 2e-2))[:2 if GPU else 1]:
        model = target.to(dtype)
        for text in prompts[:3]:
            x = tok.encode_tensor(text + text[:37], device=DEV)
            with torch.no_grad():
                full = model(x)
                for graphs in (False, True) if GPU else (False,):
                    cache = model.new_cache(1, 112, static_shapes=graphs)
                    pieces = [model(x[:, :40], cache)]
                    steps = {s: Step(model, cache, s, graph=graphs) for s in (1, 5)}
                    i = 40
                    while i < x.shape[1]:
                        s = 5 if x.shape[1] - i >= 5 and i % 2 else 1
                        pieces.append(steps[s](x[:, i:i + s]).clone())
                        i += s
                    err = rel_error(torch.cat(pieces, 1), full)
                    if not err <= tol:
                        failures.append(f"cached vs full logits {dtype} graphs={graphs}: relative error {err:.3g}")
    target.to(dtype0)
    return failures


def check_greedy(target, draft, tok, texts, n) -> list[str]:
    """fp32: reference loop and fused path == generate(); fp16: fused speculative vs fused plain (reported)."""
    failures, dtype0 = [], next(target.parameters()).dtype
    t32, d32 = target.float(), draft.float()
    prompts = [tok.encode(t) for t in texts]
    wants = [generate(t32, p, n).tokens for p in prompts]
    for p, want in zip(prompts[:2], wants):
        got = speculative_generate(t32, d32, p, n, gamma=4, graphs=GPU).tokens
        if got != want:
            i = first_difference(got, want)
            failures.append(f"reference greedy fp32 γ=4: differs from the target at token {i}")
    L = max(map(len, prompts)) + n + 16
    te, de = StaticEngine(t32, L), StaticEngine(d32, L)
    plain = PlainDecoder(te)
    for p, want in zip(prompts, wants):
        got = plain.run(p, n).tokens
        if got != want:
            failures.append(f"fused plain greedy fp32: differs from generate() at token {first_difference(got, want)}")
    for gamma in GAMMAS:
        dec = SpeculativeDecoder(te, de, gamma)
        for p, want in zip(prompts, wants):
            got = dec.run(p, n).tokens
            if got != want:
                failures.append(f"fused speculative greedy fp32 γ={gamma}: differs from the target at token "
                                f"{first_difference(got, want)}")
    print(f"  greedy fp32: reference γ=4 and fused plain + fused speculative γ {GAMMAS} on {len(prompts)} prompts x "
          f"{n} tokens: {'identical to generate()' if not failures else f'{len(failures)} differences'}")
    target.to(dtype0), draft.to(dtype0)
    return failures


def check_sampling(target, draft, tok, texts) -> list[str]:
    failures = []
    g = torch.Generator(device=DEV).manual_seed(0)
    pairs = []
    with torch.no_grad():
        for text in texts:
            x = tok.encode_tensor(text, device=DEV)
            pairs.append((probs(target(x)[0, -1], 1.0), probs(draft(x)[0, -1], 1.0), x))
    p, q, x = max(pairs, key=lambda t: float((t[0] - t[1]).abs().sum()))
    V, N = p.numel(), 200_000 if GPU else 20_000
    p2 = torch.stack([p, torch.full_like(p, 1 / V)])
    d = sample(q.expand(N, 1, V), g)
    n, nxt = accept_draft(p2.expand(N, 2, V), q.expand(N, 1, V), d, g)
    pv = chi_square(counts_of(torch.where(n > 0, d[:, 0], nxt), V), p)[2]
    pv_wrong = chi_square(counts_of(d[:, 0], V), p)[2]
    print(f"  rule on the real models' first-token distributions (L1(p, q) = {float((p - q).abs().sum()):.3f}): "
          f"p-value {pv:.3g} (want > 1e-3); always-accept p-value {pv_wrong:.3g} (want < 1e-8)")
    if not pv > 1e-3:
        failures.append(f"speculative sampling does not follow the target's distribution (p = {pv:.3g})")
    if GPU and not pv_wrong < 1e-8:
        failures.append(f"the test failed to reject always-accept (p = {pv_wrong:.3g})")
    prompt = x[:, -60:]
    with torch.no_grad():
        pt = probs(target(prompt)[0, -1], 1.0)
    # Whole reference rounds through the models and caches, from one state.
    tc, dc = target.new_cache(1, 128), draft.new_cache(1, 128)
    with torch.no_grad():
        target(prompt[:, :-1], tc)
        draft(prompt[:, :-1], dc)
    firsts, rounds = [], 1000 if GPU else 100
    for _ in range(rounds):
        new, _ = speculative_round(target, draft, tc, dc, prompt[:, -1:], 4, temperature=1.0, generator=g)
        firsts.append(new[0])
        tc.truncate(59)
        dc.truncate(59)
    pv_rounds = chi_square(counts_of(firsts, V), pt)[2]
    # Whole fused rounds, replayed from their CUDA graph (RNG inside the graph).
    dec = SpeculativeDecoder(StaticEngine(target, 80), StaticEngine(draft, 80), 4, temperature=1.0)
    torch.manual_seed(1)
    draws = 4000 if GPU else 100
    pv_fused = chi_square(counts_of(dec.first_tokens(prompt, draws), V), pt)[2]
    print(f"  whole rounds, γ = 4, T = 1: reference {rounds} draws p-value {pv_rounds:.3g}; fused (graphs={GPU}) "
          f"{draws} draws p-value {pv_fused:.3g} (want > 1e-4)")
    for name, pv in (("reference", pv_rounds), ("fused", pv_fused)):
        if not pv > 1e-4:
            failures.append(f"{name} speculative rounds do not follow the target's distribution (p = {pv:.3g})")
    return failures


def check_triton_engine(target, draft, tok, texts, n) -> list[str]:
    """TritonEngine: a pass == the model's forward (fp32, fp16); greedy plain and speculative == generate() (fp32)."""
    failures, dtype0 = [], next(target.parameters()).dtype
    x = tok.encode_tensor(texts[0], device=DEV)[0]
    for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 2e-2)):
        model = target.to(dtype)
        with torch.no_grad():
            want = model(x[None])[0].float()
        e = TritonEngine(model, x.numel() + 8)
        P = x.numel() - 7
        for S in (1, 7):
            err = rel_error(e.logits_at(x, P, S), want[P:P + S])
            if not err <= tol:
                failures.append(f"TritonEngine pass {dtype} S={S}: relative error {err:.3g} > {tol}")
    t32, d32 = target.float(), draft.float()
    prompts = [tok.encode(t) for t in texts]
    L = max(map(len, prompts)) + n + 16
    te, de = TritonEngine(t32, L), TritonEngine(d32, L)
    for p in prompts:
        want = generate(t32, p, n).tokens
        got = PlainDecoder(te).run(p, n).tokens
        if got != want:
            failures.append(f"Triton plain greedy fp32: differs from generate() at token {first_difference(got, want)}")
        for gamma in GAMMAS if GPU else (4,):  # Triton's interpreter is slow: one gamma in sim mode
            got = SpeculativeDecoder(te, de, gamma).run(p, n).tokens
            if got != want:
                failures.append(f"Triton speculative greedy fp32 γ={gamma}: differs at token {first_difference(got, want)}")
    print(f"  TritonEngine: passes vs the model (fp32, fp16), greedy plain + speculative γ {GAMMAS} on {len(prompts)} "
          f"prompts x {n} tokens: {'all agree' if not failures else f'{len(failures)} failures'}")
    target.to(dtype0), draft.to(dtype0)
    return failures


@pytest.fixture(scope="module")
def models():
    target, tok = load_model("target")
    draft, _ = load_model("draft")
    texts = heldout_prompts(8, 64, seed=2024)
    return target, draft, tok, texts


def test_cached_forward_equals_recompute(models):
    target, _, tok, texts = models
    assert check_cache(target, tok, texts) == []


def test_greedy_speculative_equals_greedy_target(models):
    target, draft, tok, texts = models
    assert check_greedy(target, draft, tok, texts[:4], 96) == []


def test_speculative_sampling_keeps_the_target_distribution(models):
    target, draft, tok, texts = models
    assert check_sampling(target, draft, tok, texts) == []


def test_triton_engine_passes_and_decoding(models):
    target, draft, tok, texts = models
    assert check_triton_engine(target, draft, tok, texts[:4], 96) == []
