"""Measure speculative decoding against plain decoding, as benchmark Records.

Each record is one decoding configuration over the same held-out prompts at batch 1:
``kernel`` is ``"target"`` (plain decoding) or ``"speculative"``; ``shape`` holds ``gamma``
(0 for plain), the new tokens per prompt and the sampling; ``time_ms`` is wall-clock time
per generated token (``None`` in sim mode: the acceptance figures still mean something
there, timings don't). ``bytes`` is the target's weights, which plain decoding must read
once per token, so ``gbps`` is an effective bandwidth: launch-bound small models sit far
below the copy roofline. ``extra`` holds alpha, tokens per target pass, the formula's
expectation and the speedup over plain decoding with the same settings.

Two implementations: :func:`bench_speculative` runs the reference loops (the model's own
forward, one graph per pass, host-side bookkeeping); :func:`bench_fast` runs
:mod:`labkit.decoding.fast` (``extra["impl"] = "fused"``: one graph per round or per K plain
steps, everything on the device). Each compares plain and speculative decoding built the same way.
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


def bench_engine_pass_cost(model, name: str, *, new_tokens=(1, 2, 3, 4, 5, 6, 7), context: int = 128,
                           linear: str = "mm", engine: str = "torch", graphs: bool | None = None) -> list[Record]:
    """Like :func:`bench_pass_cost`, for one pass of a :mod:`labkit.decoding.fast` engine (CUDA
    graph replays): ``engine="torch"``, a :class:`~labkit.decoding.engine.StaticEngine` forward
    with matmul path ``linear``; ``"triton"``, a :meth:`TritonEngine.run_pass
    <labkit.decoding.triton_engine.TritonEngine.run_pass>` (3 kernels a layer and the head).
    Records: kernel ``name``, shape ``{"S", "context"}``, extra ``impl="fused"`` and ``linear``
    (torch) or ``engine="triton"`` and ``kernels``; ``time_ms`` None in sim mode."""
    from labkit.decoding.fast import engine_class
    from labkit.decoding.graphs import Replay

    graphs = (not runtime.is_sim()) if graphs is None else graphs
    eng = engine_class(engine)(model, context + max(new_tokens) + 2, linear=linear)
    wbytes, dtype, dev = _weight_bytes(model), str(eng.dtype).replace("torch.", ""), eng.device
    seq = torch.randint(0, model.config.vocab_size, (eng.T + 1,), device=dev)
    n = torch.full((), context + 1, dtype=torch.long, device=dev)  # a Triton pass starts at position n - 1
    extra = ({"impl": "fused", "linear": linear} if engine == "torch" else
             {"impl": "fused", "engine": engine, "kernels": 3 * model.config.n_layers + 1})
    records = []
    for S in new_tokens:
        if engine == "torch":
            pos = torch.arange(context, context + S, device=dev)
            rot, mask = eng.tables(pos)

            def body(S=S, pos=pos, rot=rot, mask=mask):
                return eng.forward(seq[context:context + S], pos, rot, mask, last_only=S == 1)
        else:
            def body(S=S):
                return eng.run_pass(seq, n, -1, S)
        replay = Replay(body, graphs)
        ms = time_ms(replay) if graphs else None
        records.append(Record(kernel=name, shape={"S": S, "context": context}, dtype=dtype, bytes=wbytes,
                              time_ms=ms, gbps=gbps(wbytes, ms),
                              extra={"graphs": graphs, "layers": model.config.n_layers, **extra}))
    return records


def bench_fast(target, draft, prompts, *, gammas=(2, 3, 4, 5, 6), max_new_tokens: int | None = None,
               temperature: float = 0.0, linear="mm", draft_linear=None, steps_per_graph: int = 8,
               graphs: bool | None = None, roofline_gbps: float | None = None, seed: int = 0,
               engine: str = "torch") -> list[Record]:
    """Plain and speculative decoding through :mod:`labkit.decoding.fast` (one graph per K plain steps
    or per round), same record schema as :func:`bench_speculative` with ``extra["impl"] = "fused"``
    and ``extra["engine"]``: ``"torch"`` (:class:`~labkit.decoding.engine.StaticEngine`) or
    ``"triton"`` (:class:`~labkit.decoding.triton_engine.TritonEngine`, both loops on it;
    ``extra["impl"] = "fused-triton"``).

    ``time_ms`` is the decode loop per token (prefill excluded for both; the per-token time with
    the prefill is ``extra["ms_per_token_with_prefill"]``). Plain decoding is charged per token it
    computed (the last graph may overshoot), which favours the baseline. Each configuration runs
    once untimed first (on GPU), then over all prompts.
    """
    from labkit.decoding.fast import PlainDecoder, SpeculativeDecoder, engine_class

    n = max_new_tokens or runtime.SIZES.model_tokens
    graphs = (not runtime.is_sim()) if graphs is None else graphs
    max_len = max(len(p) for p in prompts) + n + max(max(gammas) + 1, steps_per_graph) + 1
    te = engine_class(engine)(target, max_len, linear=linear)
    de = engine_class(engine)(draft, max_len, linear=linear if draft_linear is None else draft_linear)
    wbytes, dtype, sampling = _weight_bytes(target), str(te.dtype).replace("torch.", ""), _sampling(temperature)

    def measure(dec):
        if not runtime.is_sim():
            dec.run(prompts[0], n)
        torch.manual_seed(seed)
        runs = [dec.run(p, n) for p in prompts]
        produced = sum(r.produced for r in runs)
        tokens = produced if isinstance(dec, PlainDecoder) else len(prompts) * n
        secs = sum(r.seconds for r in runs)
        return runs, secs * 1e3 / tokens, (secs + sum(r.extra["prefill_seconds"] for r in runs)) * 1e3 / tokens

    def record(kernel, gamma, runs, ms, ms_pre, base):
        ms, ms_pre = (None, None) if runtime.is_sim() else (ms, ms_pre)
        passes = sum(r.target_passes for r in runs)
        extra = {"tokens_per_pass": sum(r.produced for r in runs) / max(1, passes), "graphs": graphs,
                 "impl": "fused" if engine == "torch" else f"fused-{engine}", "engine": engine,
                 "linear": str(te.linear), "prompts": len(prompts),
                 "steps_per_graph": steps_per_graph if not gamma else None, "ms_per_token_with_prefill": ms_pre}
        if gamma:
            acc, ev = sum(r.accepted for r in runs), sum(r.evaluated for r in runs)
            alpha = acc / max(1, ev)
            extra.update(alpha=alpha, expected_tokens_per_pass=expected_tokens_per_pass(alpha, gamma))
            if ms is not None:
                extra["speedup"] = base[1] / ms
                extra["speedup_with_prefill"] = base[2] / ms_pre
            if temperature == 0:
                extra["same_tokens_as_target"] = [r.tokens for r in runs] == [r.tokens for r in base[0]]
        bw = gbps(wbytes, ms)
        return Record(kernel=kernel, shape={"gamma": gamma, "new_tokens": n, "sampling": sampling}, dtype=dtype,
                      bytes=wbytes, time_ms=ms, gbps=bw,
                      pct_roofline=100 * bw / roofline_gbps if bw and roofline_gbps else None, extra=extra)

    base = measure(PlainDecoder(te, temperature=temperature, steps_per_graph=steps_per_graph, graphs=graphs))
    records = [record("target", 0, *base, None)]
    for gamma in gammas:
        res = measure(SpeculativeDecoder(te, de, gamma, temperature=temperature, graphs=graphs))
        records.append(record("speculative", gamma, *res, base))
    return records
