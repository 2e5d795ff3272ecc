"""Speculative decoding: a cheap draft proposes gamma tokens, the target checks them in one pass.

The rule (Leviathan et al. 2023; Chen et al. 2023) keeps the target's distribution exactly:
draft token d_i, drawn from the draft's q_i, is accepted with probability min(1, p_i(d)/q_i(d));
at the first rejection the token is drawn instead from norm(max(0, p_i − q_i)); if all gamma
are accepted a bonus token is drawn from p_{gamma+1}. One target pass thus yields 1 to
gamma + 1 tokens, (1 − α^(γ+1)) / (1 − α) on average when each is accepted with probability α.

Cache convention (both models): the cache holds every token of the sequence but the last;
a round feeds that token, and afterwards both caches are truncated to the accepted length.
"""

from __future__ import annotations

import time

import torch

from labkit.decoding.generate import Generation, _device, as_prompt, new_cache
from labkit.decoding.graphs import Step
from labkit.decoding.sampling import check_sampling, probs, sample


def accept_draft(p: torch.Tensor, q: torch.Tensor, draft_tokens: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling's accept/reject step, for any leading batch dims ``...``.

    p: [..., γ+1, V] the target's distributions at the γ+1 positions; q: [..., γ, V] the
    draft's; draft_tokens: [..., γ] int64, d_i drawn from q_i. Returns (n_accepted [...] int64,
    next_token [...] int64): the sequence continues with d_1 .. d_n, then next_token. No host sync.
    """
    gamma, V = q.shape[-2], q.shape[-1]
    if p.shape[-2] != gamma + 1 or p.shape[-1] != V or draft_tokens.shape[-1] != gamma:
        raise ValueError(f"expected p [..., γ+1, V], q [..., γ, V], draft_tokens [..., γ]; got p {list(p.shape)}, "
                         f"q {list(q.shape)}, draft_tokens {list(draft_tokens.shape)}")
    d = draft_tokens.long().unsqueeze(-1)
    p_d = p[..., :gamma, :].gather(-1, d).squeeze(-1)
    q_d = q.gather(-1, d).squeeze(-1)
    u = torch.rand(p_d.shape, generator=generator, device=p.device)
    accepted = u * q_d < p_d  # u < p/q without dividing by q
    n = accepted.long().cumprod(-1).sum(-1)  # accepted before the first rejection
    # Row i < γ: the residual max(0, p_i − q_i) (rejected at i); row γ: p_{γ+1} (the bonus).
    rows = torch.cat([(p[..., :gamma, :] - q).clamp_min(0), p[..., gamma:, :]], dim=-2)
    idx = n[..., None, None].expand(*n.shape, 1, V)
    row = rows.gather(-2, idx).squeeze(-2)
    # A residual of all zeros means p_i == q_i, where rejection has probability 0; guard anyway.
    row = torch.where(row.sum(-1, keepdim=True) > 0, row, p.gather(-2, idx).squeeze(-2))
    return n, sample(row, generator)


def check_pair(target_config, draft_config, gamma: int) -> None:
    """Raise ``ValueError`` unless ``gamma >= 1`` and the two models share a vocabulary."""
    if gamma < 1:
        raise ValueError(f"gamma must be at least 1, got {gamma}")
    if target_config.vocab_size != draft_config.vocab_size:
        raise ValueError(f"target and draft must share a vocabulary: {target_config.vocab_size} vs "
                         f"{draft_config.vocab_size} tokens")


def expected_tokens_per_pass(alpha: float, gamma: int) -> float:
    """(1 − α^(γ+1)) / (1 − α): tokens per target pass when each draft token is accepted w.p. α."""
    if alpha >= 1:
        return gamma + 1.0
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


@torch.no_grad()
def speculative_round(target, draft, target_cache, draft_cache, last_token: torch.Tensor, gamma: int, *,
                      temperature: float = 0.0, top_k=None, top_p=None, generator=None, accept=accept_draft):
    """One round, written plainly (the notebook's exercise; the reference the checks use).

    last_token: [1, 1] int64, the one token of the sequence that neither cache holds yet.
    Returns (new tokens: list of 1 .. γ+1 ints, number of draft tokens accepted). Both
    caches end holding every token but the last new one.
    """
    start = target_cache.host_lengths()[0]
    token, qs, drafted = last_token, [], []
    for _ in range(gamma):  # 1. the draft proposes gamma tokens, one cheap pass each
        q = probs(draft(token, draft_cache)[0, -1], temperature, top_k, top_p)
        token = sample(q, generator).view(1, 1)
        qs.append(q)
        drafted.append(token)
    drafted = torch.cat(drafted, dim=1)  # [1, γ]
    logits = target(torch.cat([last_token, drafted], dim=1), target_cache)  # 2. one target pass
    p = probs(logits[0], temperature, top_k, top_p)  # [γ+1, V]
    n, nxt = accept(p, torch.stack(qs), drafted[0], generator)  # 3. accept / reject
    n = int(n)
    if n == gamma:  # the draft never fed its own last token
        draft(drafted[:, -1:], draft_cache)
    target_cache.truncate(start + n + 1)  # 4. roll both caches back to the accepted length
    draft_cache.truncate(start + n + 1)
    return drafted[0, :n].tolist() + [int(nxt)], n


@torch.no_grad()
def speculative_generate(target, draft, prompt, max_new_tokens: int, *, gamma: int = 4, temperature: float = 0.0,
                         top_k: int | None = None, top_p: float | None = None,
                         generator: torch.Generator | None = None, impl: str = "sdpa", graphs: bool = False,
                         accept=accept_draft) -> Generation:
    """Decode ``max_new_tokens`` tokens after ``prompt`` (batch 1) with speculative decoding.

    Same distribution as ``generate(target, ...)`` with the same sampling settings (token for
    token the same output when greedy). The host waits for the GPU once per round (to learn
    how many tokens were accepted). When all γ are accepted the draft hasn't seen d_γ yet:
    instead of an extra draft pass, the next round's first draft pass feeds two tokens.
    graphs: replay the draft's and the target's passes from CUDA graphs.
    """
    check_sampling(temperature, top_k, top_p)
    check_pair(target.config, draft.config, gamma)
    device = _device(target)
    prompt = as_prompt(prompt, device)
    max_len = prompt.shape[1] + max_new_tokens + gamma + 1
    tcache = new_cache(target, max_len, impl=impl, graphs=graphs)
    dcache = new_cache(draft, max_len, impl=impl, graphs=graphs)
    verify = Step(target, tcache, gamma + 1, graph=graphs)
    draft_steps = {s: Step(draft, dcache, s, last_only=True, graph=graphs) for s in (1, 2)}
    greedy = temperature == 0
    gen = Generation(tokens=[])
    start = time.perf_counter()
    if prompt.shape[1] > 1:
        target(prompt[:, :-1], tcache, last_only=True)
        draft(prompt[:, :-1], dcache, last_only=True)
    last, feed = prompt[0, -1:], prompt[0, -1:]  # feed: what the draft cache lacks (1 or 2 tokens)
    while len(gen.tokens) < max_new_tokens:
        base, dbase = tcache.host_lengths()[0], dcache.host_lengths()[0]
        x, drafted, qs = feed, [], []
        for _ in range(gamma):
            logits = draft_steps[x.numel()](x.view(1, -1))[0, -1]
            if greedy:
                d = logits.argmax(-1)
            else:
                qs.append(probs(logits, temperature, top_k, top_p))
                d = sample(qs[-1], generator)
            drafted.append(d)
            x = d.view(1)
        drafted = torch.stack(drafted)  # [γ]
        logits = verify(torch.cat([last, drafted]).view(1, -1))[0]  # [γ+1, V]
        if greedy:
            best = logits.argmax(-1)
            n = (best[:gamma] == drafted).long().cumprod(0).sum()
            nxt = best.gather(0, n.view(1)).squeeze(0)  # best[n] would read n back to the host
        else:
            n, nxt = accept(probs(logits, temperature, top_k, top_p), torch.stack(qs), drafted, generator)
        host = torch.cat([drafted, n.view(1), nxt.view(1)]).tolist()  # the round's one sync
        k = host[gamma]
        gen.tokens += host[:k] + [host[gamma + 1]]
        gen.produced += k + 1
        gen.target_passes += 1
        gen.draft_passes += gamma
        gen.proposed += gamma
        gen.accepted += k
        gen.evaluated += k + (k < gamma)
        tcache.truncate(base + k + 1)
        if k < gamma:
            dcache.truncate(dbase + feed.numel() + k)
            feed = nxt.view(1)
        else:
            feed = torch.stack([drafted[-1], nxt])
        last = nxt.view(1)
    gen.tokens = gen.tokens[:max_new_tokens]
    gen.seconds = time.perf_counter() - start
    gen.extra = {"gamma": gamma, "rounds": gen.target_passes}
    return gen
