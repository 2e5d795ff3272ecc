"""Speculative decoding on a GPU: correctness first, then the speedup over plain decoding.

    PYTHONPATH=. python scripts/gpu/speculative.py --out DIR [--models data/models] [--quick]

1. Correctness (exits 1 on any failure):
   - the model's cached forward == full recompute (fp32, fp16; eager and CUDA-graph passes);
   - greedy speculative output == greedy target output token for token on held-out prompts, in
     fp32 (where a near-tie can't flip an argmax): the reference loop (speculative_generate)
     and the fused fast path (labkit.decoding.fast, plain and speculative, γ 2 … 6);
   - speculative sampling draws from the target's distribution: the rule on the real models'
     first-token distributions (and a wrong rule rejected), whole reference rounds, and whole
     fused rounds replayed from their CUDA graph;
   - the Triton engine (labkit.decoding.triton_engine): its passes against the model's forward
     (fp32, fp16), and its greedy plain and speculative decoding against generate() (fp32).
2. Benchmark (fp16, batch 1, held-out prompts, CUDA graphs): one forward pass vs its new tokens
   (model path, and the fused engine with each linear mode, which picks the faster mode per
   pass size, and the Triton engine); the reference loop at γ 2, 4, 6; the fused path, plain vs
   speculative at γ 2 … 6 greedy and at γ = 4 with T = 1; the same greedy sweep on the Triton
   engine, plain decoding on it the baseline. Saves speculative_<gpu>.json, prints the tables and the
   targets: >= 3 tokens per target pass at γ = 4 (greedy), >= 2× wall-clock speedup.
Each step is guarded: a failing one is reported and the rest still run.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

import labkit  # noqa: F401  (mode first)
import torch

from labkit import runtime
from labkit.bench import copy_roofline_gbps, run_meta, save_records
from labkit.checks.core import rel_error
from labkit.decoding import (accept_draft, chi_square, counts_of, generate, probs, sample, speculative_generate,
                             speculative_round)
from labkit.decoding.bench import bench_engine_pass_cost, bench_fast, bench_pass_cost, bench_speculative
from labkit.decoding.engine import LINEAR_MODES, StaticEngine
from labkit.decoding.fast import PlainDecoder, SpeculativeDecoder
from labkit.decoding.triton_engine import TritonEngine
from labkit.decoding.graphs import Step
from labkit.decoding.plots import format_speculative_table
from labkit.model import heldout_prompts, load_model

DEV = runtime.device()
GPU = not runtime.is_sim()
GAMMAS = (2, 3, 4, 5, 6)


def attempt(failures: list, name: str, fn, default=None):
    """fn(), or (on an exception) report it, count it as a failure and return default."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - one failing step must not stop the run
        traceback.print_exc()
        failures.append(f"{name}: {type(exc).__name__}: {exc}")
        return default


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


def tune_linear(records) -> dict:
    """{S: fastest linear mode} from the fused engine's pass records of one model ({} without timings)."""
    best = {}
    for r in records:
        if r.time_ms is not None:
            S = r.shape["S"]
            if S not in best or r.time_ms < best[S][0]:
                best[S] = (r.time_ms, r.extra["linear"])
    return {S: mode for S, (_, mode) in sorted(best.items())}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="data/results")
    ap.add_argument("--models", default=None, help="folder with target.safetensors and draft.safetensors")
    ap.add_argument("--quick", action="store_true", help="fewer prompts and tokens (sim mode: always)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    path = (lambda n: f"{a.models}/{n}.safetensors") if a.models else (lambda n: n)
    target, tok = load_model(path("target"))
    draft, _ = load_model(path("draft"))
    if not GPU:
        torch.set_num_threads(1)
        print("sim mode: a smoke run on few tokens, no timings (timings need a GPU)")
    for name, m in (("target", target), ("draft", draft)):
        info = m.training_info
        print(f"{name}: {m.num_params() / 1e6:.2f} M parameters, {m.config.n_layers} layers, d_model "
              f"{m.config.d_model}, {m.num_params() * 2 / 1e6:.1f} MB fp16; trained {info.get('steps')} steps on "
              f"{info.get('device')} ({info.get('date')}), val loss {info.get('val_loss')}")
    n_prompts, n_tokens = (8, runtime.SIZES.model_tokens) if GPU and not a.quick else (4, 128) if GPU else (2, 16)
    texts = heldout_prompts(n_prompts, 64, seed=2024)
    prompts = [tok.encode(t) for t in texts]

    print("correctness")
    failures: list[str] = []
    failures += attempt(failures, "cache check", lambda: check_cache(target, tok, texts), [])
    failures += attempt(failures, "greedy check", lambda: check_greedy(target, draft, tok, texts[:4] if GPU else
                                                                       texts[:1], 96 if GPU else 12), [])
    failures += attempt(failures, "sampling check", lambda: check_sampling(target, draft, tok, texts), [])
    failures += attempt(failures, "Triton engine check", lambda: check_triton_engine(
        target, draft, tok, texts[:4] if GPU else texts[:1], 96 if GPU else 8), [])
    for f in failures:
        print("  FAIL", f)
    print(f"  {'all correctness checks pass' if not failures else f'{len(failures)} failures'} "
          f"({time.perf_counter() - t0:.0f} s)")

    print("benchmark")
    roofline = copy_roofline_gbps()
    records, skipped = [], []  # skipped: optional variants that failed (reported, not a failure of the run)
    kw = dict(max_new_tokens=n_tokens, roofline_gbps=roofline)
    for model, name in ((target, "target pass"), (draft, "draft pass")):
        records += attempt(skipped, f"{name} cost", lambda m=model, n=name: bench_pass_cost(m, n), [])
        for mode in LINEAR_MODES:
            records += attempt(skipped, f"{name} cost, fused {mode}", lambda m=model, n=name, mode=mode:
                               bench_engine_pass_cost(m, f"{n}, fused {mode}", linear=mode), [])
        records += attempt(skipped, f"{name} cost, Triton engine", lambda m=model, n=name:
                           bench_engine_pass_cost(m, f"{n}, triton", engine="triton"), [])
    tuned = {name: tune_linear([r for r in records if r.kernel.startswith(f"{name} pass, fused")])
             for name in ("target", "draft")}
    lin_t, lin_d = tuned["target"] or "mm", tuned["draft"] or "mm"
    print(f"  linear mode per pass size (fastest measured): target {lin_t}, draft {lin_d}")
    records += attempt(skipped, "reference loop", lambda: bench_speculative(
        target, draft, prompts, gammas=(2, 4, 6), graphs=GPU, **kw), [])
    records += attempt(failures, "fused greedy", lambda: bench_fast(
        target, draft, prompts, gammas=GAMMAS, linear=lin_t, draft_linear=lin_d, **kw), [])
    records += attempt(failures, "fused sampling", lambda: bench_fast(
        target, draft, prompts, gammas=(4,), temperature=1.0, linear=lin_t, draft_linear=lin_d,
        **kw), [])
    records += attempt(failures, "Triton engine greedy", lambda: bench_fast(
        target, draft, prompts, gammas=GAMMAS, engine="triton", **kw), [])
    meta = run_meta(roofline)
    meta.update(target_params=target.num_params(), draft_params=draft.num_params(),
                target_layers=target.config.n_layers, draft_layers=draft.config.n_layers,
                target_training=target.training_info, draft_training=draft.training_info,
                prompts=len(prompts), new_tokens=n_tokens, linear_target=str(lin_t), linear_draft=str(lin_d),
                timing="fused: decode loop per token, prefill excluded (with it: extra); reference: prefill included")
    out = save_records(records, "speculative", meta, directory=a.out)

    print("\none forward pass at batch 1 (µs), by new tokens S:")
    for name in sorted({r.kernel for r in records if " pass" in r.kernel}):
        rows = sorted((r for r in records if r.kernel == name), key=lambda r: (r.shape["S"], r.extra.get("linear", "")))
        print(f"  {name:<26}" + "  ".join(f"S={r.shape['S']}{'/' + r.extra['linear'] if 'linear' in r.extra else ''}: "
                                          f"{r.time_ms * 1e3:6.1f}" for r in rows if r.time_ms is not None))
    print()
    print(format_speculative_table(records))
    how = "fp16, CUDA graphs" if GPU else "sim mode, no timings"
    print(f"\nsummary: fused path, batch 1, {len(prompts)} held-out prompts x {n_tokens} new tokens, {how};"
          f" target {target.num_params() / 1e6:.2f} M ({target.config.n_layers} layers), draft "
          f"{draft.num_params() / 1e6:.2f} M ({draft.config.n_layers} layer)")
    fused = [r for r in records if r.extra.get("impl") in ("fused", "fused-triton")]
    print(format_speculative_table(fused))
    with_prefill = [f"γ={r.shape['gamma']} {r.shape['sampling']} {r.extra['speedup_with_prefill']:.2f}x" for r in fused
                    if r.kernel == "speculative" and r.extra.get("speedup_with_prefill")]
    if with_prefill:
        print("  speedup with the prefill counted: " + ", ".join(with_prefill))
    greedy = [r for r in records if r.kernel == "speculative" and r.extra.get("impl") in ("fused", "fused-triton")
              and r.shape["sampling"] == "greedy"]
    for r in greedy:
        if r.extra.get("same_tokens_as_target") is False:
            print(f"  note: fused γ={r.shape['gamma']} fp16 output differs from fused plain on some prompt "
                  f"(near-tie argmax in fp16; the fp32 check above is exact)")
    print("\ntargets")
    g4 = next((r for r in greedy if r.shape["gamma"] == 4 and r.extra["impl"] == "fused"), None)
    if g4 is not None:
        tpp = g4.extra["tokens_per_pass"]
        print(f"  tokens per target pass at γ = 4 (greedy): {tpp:.2f} (α {g4.extra['alpha']:.3f}, formula "
              f"{g4.extra['expected_tokens_per_pass']:.2f}) — target >= 3: {'MET' if tpp >= 3 else 'MISSED'}")
    plain_ms = {r.extra["impl"]: r.time_ms for r in records if r.kernel == "target" and r.time_ms
                and r.shape["sampling"] == "greedy" and r.extra.get("impl") in ("fused", "fused-triton")}
    for impl in ("fused", "fused-triton"):
        timed = [r for r in greedy if r.extra.get("speedup") and r.extra["impl"] == impl]
        if timed:
            best = max(timed, key=lambda r: r.extra["speedup"])
            at4 = next((r.extra["speedup"] for r in timed if r.shape["gamma"] == 4), 0)
            print(f"  wall-clock speedup (greedy, {impl}, over plain decoding on the same engine): {at4:.2f}x at "
                  f"γ = 4, best {best.extra['speedup']:.2f}x at γ = {best.shape['gamma']} "
                  f"({best.time_ms * 1e3:.0f} µs/token against {plain_ms.get(impl, 0) * 1e3:.0f}) — target >= 2x: "
                  f"{'MET' if best.extra['speedup'] >= 2 else 'MISSED'}")
    for f in skipped:
        print("  SKIPPED (failed)", f)
    for f in failures:
        print("  FAIL", f)
    print(f"saved {out} ({time.perf_counter() - t0:.0f} s in all)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
