"""Measure speculative decoding against plain decoding, as benchmark Records.

Each record is one decoding configuration over the same held-out prompts at batch 1:
``kernel`` is ``"target"`` (plain decoding) or ``"speculative"``; ``shape`` holds ``gamma``
(0 for plain), the new tokens per prompt and the sampling; ``time_ms`` is wall-clock time
per generated token (``None`` in sim mode: the acceptance figures still mean something
there, timings don't). ``bytes`` is the target's weights, which plain decoding must read
once per token, so ``gbps`` is an effective bandwidth: launch-bound small models sit far
below the copy roofline. ``extra`` holds alpha, tokens per target pass, the formula's
expectation and the speedup over plain decoding with the same settings.
"""

from __future__ import annotations

import torch

from labkit import runtime
from labkit.bench.records import Record
from labkit.bench.timing import gbps, time_ms
from labkit.decoding.generate import generate
from labkit.decoding.speculative import expected_tokens_per_pass, speculative_generate


def _weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _sampling(temperature: float) -> str:
    return "greedy" if temperature == 0 else f"T={temperature:g}"


def _run(fn, prompts, seed):
    g = torch.Generator(device=runtime.device()).manual_seed(seed)
    runs = [fn(p, g) for p in prompts]
    tokens = sum(len(r.tokens) for r in runs)
    return {
        "ms_per_token": sum(r.seconds for r in runs) * 1e3 / tokens,
        "tokens": tokens,
        "passes": sum(r.target_passes for r in runs),
        "produced": sum(r.produced or len(r.tokens) for r in runs),
        "accepted": sum(r.accepted for r in runs),
        "evaluated": sum(r.evaluated for r in runs),
        "outputs": [r.tokens for r in runs],
    }


def bench_speculative(target, draft, prompts, *, gammas=(1, 2, 3, 4, 6, 8), max_new_tokens: int | None = None,
                      temperature: float = 0.0, graphs: bool | None = None, impl: str = "sdpa",
                      roofline_gbps: float | None = None, seed: int = 0) -> list[Record]:
    """Plain decoding and speculative decoding at each gamma over ``prompts`` (lists of token ids).

    graphs: CUDA graphs for every pass (default: on in gpu mode). Each configuration runs
    once untimed first (warm-up: cuBLAS, the allocator), then once timed. Returns Records.
    """
    n = max_new_tokens or runtime.SIZES.model_tokens
    graphs = (not runtime.is_sim()) if graphs is None else graphs
    wbytes = _weight_bytes(target)
    dtype = str(next(target.parameters()).dtype).replace("torch.", "")
    sampling = _sampling(temperature)
    kw = dict(temperature=temperature, graphs=graphs, impl=impl)

    def record(kernel, gamma, res, base_ms):
        ms = None if runtime.is_sim() else res["ms_per_token"]
        alpha = res["accepted"] / max(1, res["evaluated"])
        bw = gbps(wbytes, ms)
        extra = {"tokens_per_pass": res["produced"] / max(1, res["passes"]), "graphs": graphs, "impl": impl,
                 "prompts": len(prompts)}
        if gamma:
            extra.update(alpha=alpha, expected_tokens_per_pass=expected_tokens_per_pass(alpha, gamma))
        if ms is not None and base_ms:
            extra["speedup"] = base_ms / ms
        return Record(kernel=kernel, shape={"gamma": gamma, "new_tokens": n, "sampling": sampling}, dtype=dtype,
                      bytes=wbytes, time_ms=ms, gbps=bw,
                      pct_roofline=100 * bw / roofline_gbps if bw and roofline_gbps else None, extra=extra)

    def plain(p, g):
        return generate(target, p, n, generator=g, **kw)

    if not runtime.is_sim():
        _run(plain, prompts[:1], seed)
    base = _run(plain, prompts, seed)
    records = [record("target", 0, base, None)]
    for gamma in gammas:
        def spec(p, g, gamma=gamma):
            return speculative_generate(target, draft, p, n, gamma=gamma, generator=g, **kw)
        if not runtime.is_sim():
            _run(spec, prompts[:1], seed)
        res = _run(spec, prompts, seed + gamma)
        records.append(record("speculative", gamma, res, None if runtime.is_sim() else base["ms_per_token"]))
        if temperature == 0:
            records[-1].extra["same_tokens_as_target"] = res["outputs"] == base["outputs"]
    return records


def bench_pass_cost(model, name: str, *, new_tokens=(1, 2, 3, 5, 9, 17), context: int = 128,
                    graphs: bool | None = None) -> list[Record]:
    """Time of one cached forward pass of ``model`` over S new tokens after ``context`` cached ones.

    The point: at batch 1 a small model's pass costs about the same for 1 token as for 5,
    which is why checking gamma draft tokens in one target pass is nearly free. Records
    have kernel ``name``, shape ``{"S": S, "context": context}``; ``time_ms`` is None in sim mode.
    """
    from labkit.decoding.graphs import Step

    graphs = (not runtime.is_sim()) if graphs is None else graphs
    dev = runtime.device()
    wbytes = _weight_bytes(model)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    records = []
    for S in new_tokens:
        cache = model.new_cache(1, -(-(context + S) // 16) * 16, static_shapes=graphs)
        with torch.no_grad():
            model(torch.randint(0, model.config.vocab_size, (1, context), device=dev), cache)
            step = Step(model, cache, S, graph=graphs)
            tokens = torch.randint(0, model.config.vocab_size, (1, S), device=dev)
            # The pass is begun and never committed, so every repetition writes and reads the same slots.
            cache.begin(S)
            positions = cache.lengths.long()[:, None] + torch.arange(S, device=dev)[None, :]
            if step.graph is not None:
                step.tokens.copy_(tokens)
                ms = time_ms(step.graph.replay)
            else:
                ms = time_ms(lambda: model.forward_positions(tokens, positions, cache))
            cache.truncate(context)
        records.append(Record(kernel=name, shape={"S": S, "context": context}, dtype=dtype, bytes=wbytes,
                              time_ms=ms, gbps=gbps(wbytes, ms), extra={"graphs": graphs,
                                                                        "layers": model.config.n_layers}))
    return records
