"""Speculative decoding on a GPU: correctness first, then the speedup and its targets.

    PYTHONPATH=. python scripts/gpu/speculative.py --out DIR [--models data/models] [--quick]

1. Correctness (exits 1 on any failure):
   - cached forward == full recompute (fp32 and fp16), eager and CUDA-graph passes;
   - greedy speculative output == greedy target output, token for token, on held-out prompts
     (fp32, where a near-tie can't flip an argmax; fp16 divergences are reported with the
     logit gap at the first differing token);
   - speculative sampling draws from the target's distribution: the real models' first-token
     distributions through the rule (chi-square accepts), a wrong rule (always accept) rejected,
     and whole rounds through the models and caches.
2. Benchmark (fp16, batch 1, held-out prompts): plain decoding and speculative decoding at
   gamma 1 … 8, CUDA graphs and eager, greedy and T = 1; one forward pass vs its new tokens.
   Saves speculative_<gpu>.json and prints the table and the targets: >= 3 tokens per target
   pass at gamma = 4 (greedy) and >= 2x wall-clock speedup over plain decoding.
"""

from __future__ import annotations

import argparse
import sys
import time

import labkit  # noqa: F401  (mode first)
import torch

from labkit import runtime
from labkit.bench import copy_roofline_gbps, run_meta, save_records
from labkit.checks.core import rel_error
from labkit.decoding import (accept_draft, chi_square, counts_of, generate, probs, sample, speculative_generate,
                             speculative_round)
from labkit.decoding.bench import bench_pass_cost, bench_speculative
from labkit.decoding.graphs import Step
from labkit.decoding.plots import format_speculative_table
from labkit.kvcache.contiguous import _accepts_lengths
from labkit.model import heldout_prompts, load_model

DEV = runtime.device()


def check_cache(target, tok, prompts, graphs_ok: bool) -> list[str]:
    failures = []
    for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 2e-2)):
        model = target.to(dtype)
        for text in prompts[:3]:
            x = tok.encode_tensor(text + text[:37], device=DEV)
            with torch.no_grad():
                full = model(x)
                for graphs in (False, True) if graphs_ok else (False,):
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
    target.half()
    return failures


def check_greedy(target, draft, tok, prompts, n, graphs_ok: bool) -> list[str]:
    failures = []
    t32, d32 = target.float(), draft.float()
    for text in prompts:
        p = tok.encode(text)
        want = generate(t32, p, n).tokens
        for graphs in (False, True) if graphs_ok else (False,):
            for gamma in (1, 4, 7):
                got = speculative_generate(t32, d32, p, n, gamma=gamma, graphs=graphs).tokens
                if got != want:
                    i = next(j for j, (a, b) in enumerate(zip(got, want)) if a != b)
                    failures.append(f"greedy fp32 gamma={gamma} graphs={graphs}: differs from the target at token {i}")
    target.half(), draft.half()
    diverged = []
    for text in prompts:
        p = tok.encode(text)
        want = generate(target, p, n, graphs=graphs_ok).tokens
        got = speculative_generate(target, draft, p, n, gamma=4, graphs=graphs_ok).tokens
        if got != want:
            i = next(j for j, (a, b) in enumerate(zip(got, want)) if a != b)
            with torch.no_grad():
                logits = target.float()(torch.tensor([p + want[:i]], device=DEV))[0, -1]
            target.half()
            top2 = logits.topk(2).values
            diverged.append(f"token {i} (fp32 top-2 logit gap {float(top2[0] - top2[1]):.3g})")
    print(f"  fp16 greedy, speculative vs plain: {len(prompts) - len(diverged)}/{len(prompts)} prompts identical"
          + (f"; first divergences at {', '.join(diverged)} (fp16 near-ties: verify and step passes round differently)"
             if diverged else ""))
    return failures


def check_sampling(target, draft, tok, prompts) -> list[str]:
    failures = []
    g = torch.Generator(device=DEV).manual_seed(0)
    pairs = []
    with torch.no_grad():
        for text in prompts:
            x = tok.encode_tensor(text, device=DEV)
            pairs.append((probs(target(x)[0, -1], 1.0), probs(draft(x)[0, -1], 1.0), x))
    p, q, x = max(pairs, key=lambda t: float((t[0] - t[1]).abs().sum()))
    V, N = p.numel(), 200_000
    p2 = torch.stack([p, torch.full_like(p, 1 / V)])
    d = sample(q.expand(N, 1, V), g)
    n, nxt = accept_draft(p2.expand(N, 2, V), q.expand(N, 1, V), d, g)
    first = torch.where(n > 0, d[:, 0], nxt)
    pv = chi_square(counts_of(first, V), p)[2]
    pv_wrong = chi_square(counts_of(d[:, 0], V), p)[2]
    print(f"  rule on the real models' first-token distributions (L1(p, q) = {float((p - q).abs().sum()):.3f}): "
          f"p-value {pv:.3g} (want > 1e-3); always-accept p-value {pv_wrong:.3g} (want < 1e-8)")
    if not pv > 1e-3:
        failures.append(f"speculative sampling does not follow the target's distribution (p = {pv:.3g})")
    if not pv_wrong < 1e-8:
        failures.append(f"the test failed to reject always-accept (p = {pv_wrong:.3g})")
    # Whole rounds through the models and caches, from one state.
    tc, dc = target.new_cache(1, 128), draft.new_cache(1, 128)
    prompt = x[:, -60:]
    with torch.no_grad():
        target(prompt[:, :-1], tc)
        draft(prompt[:, :-1], dc)
        pt = probs(target(prompt)[0, -1], 1.0)
    firsts, rounds = [], 1500
    for _ in range(rounds):
        new, _ = speculative_round(target, draft, tc, dc, prompt[:, -1:], 4, temperature=1.0, generator=g)
        firsts.append(new[0])
        tc.truncate(59)
        dc.truncate(59)
    pv_rounds = chi_square(counts_of(firsts, V), pt)[2]
    print(f"  whole rounds (gamma 4, {rounds} draws): p-value {pv_rounds:.3g} (want > 1e-4)")
    if not pv_rounds > 1e-4:
        failures.append(f"speculative rounds do not follow the target's distribution (p = {pv_rounds:.3g})")
    return failures


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="data/results")
    ap.add_argument("--models", default=None, help="folder with target.safetensors and draft.safetensors")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if runtime.is_sim():
        print("this script needs a GPU (labkit is in sim mode)")
        return 2
    t0 = time.perf_counter()
    path = (lambda n: f"{a.models}/{n}.safetensors") if a.models else (lambda n: n)
    target, tok = load_model(path("target"))
    draft, _ = load_model(path("draft"))
    for name, m in (("target", target), ("draft", draft)):
        info = m.training_info
        print(f"{name}: {m.num_params() / 1e6:.2f} M parameters, {m.config.n_layers} layers, d_model "
              f"{m.config.d_model}, {m.num_params() * 2 / 1e6:.1f} MB fp16; trained {info.get('steps')} steps on "
              f"{info.get('device')} ({info.get('date')}), val loss {info.get('val_loss')}")
    n_prompts, n_tokens = (4, 128) if a.quick else (8, runtime.SIZES.model_tokens)
    texts = heldout_prompts(n_prompts, 64, seed=2024)

    print("correctness")
    failures = []
    try:  # if capture fails, report it and still measure everything eagerly
        generate(target, tok.encode(texts[0]), 8, graphs=True)
        speculative_generate(target, draft, tok.encode(texts[0]), 8, graphs=True)
        graphs = True
    except Exception as exc:  # noqa: BLE001
        failures.append(f"CUDA graphs: {type(exc).__name__}: {exc}")
        graphs = False
    failures += check_cache(target, tok, texts, graphs)
    failures += check_greedy(target, draft, tok, texts[:4], 96, graphs)
    failures += check_sampling(target, draft, tok, texts)
    for f in failures:
        print("  FAIL", f)
    print(f"  {'all correctness checks pass' if not failures else f'{len(failures)} failures'} "
          f"({time.perf_counter() - t0:.0f} s)")

    print("benchmark")
    roofline = copy_roofline_gbps()
    prompts = [tok.encode(t) for t in texts]
    records = []
    records += bench_pass_cost(target, "target pass", graphs=graphs)
    records += bench_pass_cost(draft, "draft pass", graphs=graphs)
    records += bench_speculative(target, draft, prompts, gammas=(1, 2, 3, 4, 5, 6, 8), max_new_tokens=n_tokens,
                                 graphs=graphs, roofline_gbps=roofline)
    if graphs:
        records += bench_speculative(target, draft, prompts, gammas=(4,), max_new_tokens=n_tokens, graphs=False,
                                     roofline_gbps=roofline)
    records += bench_speculative(target, draft, prompts, gammas=(2, 4, 6), max_new_tokens=n_tokens, graphs=graphs,
                                 temperature=1.0, roofline_gbps=roofline)
    meta = run_meta(roofline)
    meta.update(target_params=target.num_params(), draft_params=draft.num_params(),
                target_training=target.training_info, draft_training=draft.training_info,
                prompts=len(prompts), new_tokens=n_tokens)
    out = save_records(records, "speculative", meta, directory=a.out)  # saved before the optional variant
    if _accepts_lengths("triton_splitk"):
        try:  # decode steps through notebook 03's flash-decoding kernel instead of SDPA
            records += bench_speculative(target, draft, prompts, gammas=(4,), max_new_tokens=n_tokens, graphs=graphs,
                                         impl="triton_splitk", roofline_gbps=roofline)
            out = save_records(records, "speculative", meta, directory=a.out)
        except Exception as exc:  # noqa: BLE001 - an optional variant; report and go on
            print(f"  (triton_splitk decode steps skipped: {type(exc).__name__}: {exc})")

    print("\none forward pass at batch 1 (µs), by new tokens S:")
    for name in ("target pass", "draft pass"):
        rows = [r for r in records if r.kernel == name]
        print(f"  {name:<12}" + "  ".join(f"S={r.shape['S']}: {r.time_ms * 1e3:6.1f}" for r in rows))
    print()
    print(format_speculative_table(records))
    for r in records:
        if r.extra.get("same_tokens_as_target") is False:
            print(f"  note: speculative γ={r.shape['gamma']} ({'graphs' if r.extra['graphs'] else 'eager'}) output "
                  f"differs from plain decoding in fp16 on some prompt (near-tie argmax; fp32 check above is exact)")
    spec = [r for r in records if r.kernel == "speculative" and r.shape["sampling"] == "greedy"
            and r.extra["graphs"] == graphs and r.extra["impl"] == "sdpa"]
    g4 = next(r for r in spec if r.shape["gamma"] == 4)
    best = max(spec, key=lambda r: r.extra["speedup"])
    mode = "CUDA graphs" if graphs else "eager (CUDA graphs FAILED)"
    print("\ntargets")
    print(f"  tokens per target pass at gamma = 4 (greedy): {g4.extra['tokens_per_pass']:.2f} (alpha "
          f"{g4.extra['alpha']:.3f}; formula {g4.extra['expected_tokens_per_pass']:.2f}) — target >= 3: "
          f"{'MET' if g4.extra['tokens_per_pass'] >= 3 else 'MISSED'}")
    print(f"  wall-clock speedup, {mode}: {g4.extra['speedup']:.2f}x at gamma = 4, best "
          f"{best.extra['speedup']:.2f}x at gamma = {best.shape['gamma']} — target >= 2x: "
          f"{'MET' if best.extra['speedup'] >= 2 else 'MISSED'}")
    if graphs:
        eager4 = next(r for r in records if r.kernel == "speculative" and not r.extra["graphs"])
        plain_g = next(r for r in records if r.kernel == "target" and r.extra["graphs"] and r.extra["impl"] == "sdpa")
        plain_e = next(r for r in records if r.kernel == "target" and not r.extra["graphs"])
        print(f"  eager (no graphs), gamma = 4: {eager4.extra['speedup']:.2f}x; plain decoding {plain_e.time_ms:.3f} "
              f"ms/token eager vs {plain_g.time_ms:.3f} with CUDA graphs")
    print(f"saved {out} ({time.perf_counter() - t0:.0f} s in all)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
