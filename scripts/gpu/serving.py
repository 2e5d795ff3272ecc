"""Continuous batching on a GPU: correctness, then static vs continuous batching, then a rate sweep.

    PYTHONPATH=. python scripts/gpu/serving.py --out DIR [--quick]

1. Correctness (exit 1 on failure): the target model in fp32 served over a small paged pool
   (so requests are preempted and recomputed) with a small token budget (so prompts are
   chunked and steps mix prefill with decode). Every request's greedy output must equal the
   model's own greedy output for that request alone (full recompute, no cache), except from
   a step where the reference's top two logits are within TIE of each other (a numerical
   tie; reported). No block may be left allocated once the engine drains.
2. Static vs continuous: same model (data/models/target.safetensors, fp16), same KV memory
   (``max_batch`` x 1024 tokens of paged blocks), same maximum batch, the same workload of
   mixed output lengths (SERVING_MIX, every request waiting at t=0). Wall clock, synchronised
   at every step. TARGET: continuous >= 4x static throughput, and a lower p99 time to first token.
3. Both policies over Poisson arrival rates (fractions of the continuous capacity measured in 2).

Records of 2 and 3 go to DIR/serving_<gpu>.json. In sim mode (no GPU) it runs the same
stages on a tiny random model and tiny sizes, on the logical clock, to test the script.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import labkit  # noqa: F401  (decides the mode before triton is imported)
import torch

from labkit import runtime
from labkit.bench import run_meta, save_records
from labkit.serving import Engine, StepClock
from labkit.serving.bench import format_comparison, load_runner, measure, pool_blocks
from labkit.serving.plots import format_sweep
from labkit.serving.runner import PagedRunner
from labkit.serving.workloads import SERVING_MIX, SMALL_SERVING_MIX, describe, make_requests
from labkit.workload import LengthMix

TIE = 1e-3  # logits closer than this are a tie: fp32 rounding may pick either
CHECK_MIX = (LengthMix("short", 0.7, prompt_median=40, prompt_sigma=0.8, output_median=12, output_sigma=0.6),
             LengthMix("long", 0.3, prompt_median=150, prompt_sigma=0.4, output_median=40, output_sigma=0.4))
SIM = runtime.is_sim()


def tiny_model():
    from labkit.model import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=65, d_model=32, n_layers=1, n_heads=2, max_len=128)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(8.0)  # sharper logits: fewer near-ties for the correctness check
    return model


def solo_greedy(model, prompt: list, n: int) -> tuple[list, list]:
    """The model alone, no cache: greedy tokens and, per step, the gap between its top two logits."""
    tokens, gaps = list(prompt), []
    with torch.inference_mode():
        for _ in range(n):
            logits = model(torch.tensor([tokens], device=runtime.device()))[0, -1].float()
            top = torch.topk(logits, 2).values
            gaps.append(float(top[0] - top[1]))
            tokens.append(int(logits.argmax()))
    return tokens[len(prompt):], gaps


def check_correctness(model, tokenizer) -> list[str]:
    model = copy.deepcopy(model).float()
    if SIM:
        reqs = make_requests(12, seed=1, mix=SMALL_SERVING_MIX, vocab_size=model.config.vocab_size,
                             max_context=model.config.max_len, rate=2.0)
        bs, blocks, max_batch, budget, clock = 4, 10, 4, 8, StepClock()
    else:
        reqs = make_requests(32, seed=1, mix=CHECK_MIX, tokenizer=tokenizer, max_context=model.config.max_len,
                             rate=400.0)
        bs, blocks, max_batch, budget, clock = 16, 44, 8, 64, None
    # A pool too small for everyone at once (preemptions), but big enough for the longest request alone.
    blocks = max(blocks, max(-(-(len(r.prompt) + r.max_new_tokens) // bs) for r in reqs))
    runner = PagedRunner(model, num_blocks=blocks, block_size=bs)
    engine = Engine(runner, max_batch=max_batch, token_budget=budget, clock=clock)
    done = engine.run(reqs)
    failures, ties = [], 0
    for r in done:
        want, gaps = solo_greedy(model, r.prompt, r.max_new_tokens)
        if r.output != want:
            i = next(i for i, (a, b) in enumerate(zip(r.output, want)) if a != b)
            if gaps[i] < TIE:
                ties += 1
            else:
                failures.append(f"request {r.request_id}: output differs from the model alone at token {i} "
                                f"(reference top-2 gap {gaps[i]:.3g}): {r.output[:i + 3]} vs {want[:i + 3]}")
    if runner.blocks.num_free != runner.blocks.num_blocks or any(runner.blocks.tables.values()):
        failures.append(f"{runner.blocks.num_blocks - runner.blocks.num_free} blocks leaked after draining")
    preempted = sum(r.num_preemptions for r in done)
    mixed = sum(1 for s in engine.steps if s.prefill_tokens and s.decodes)
    chunked = sum(1 for s in engine.steps if s.prefill_tokens) > sum(1 for r in done if len(r.prompt) > 1)
    print(f"correctness: {len(done)} requests, {len(engine.steps)} steps, {preempted} preemptions, {mixed} steps "
          f"mixing prefill and decode, prompts chunked: {chunked}; {len(done) - len(failures) - ties} identical, "
          f"{ties} diverged at a numerical tie (top-2 gap < {TIE}), {len(failures)} failures")
    if not (preempted and mixed):
        failures.append("the correctness run did not exercise preemption and mixed steps: make the pool smaller")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/results", help="where to write serving_<gpu>.json")
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke test)")
    parser.add_argument("--max-batch", type=int, default=4 if SIM else 32)
    parser.add_argument("--requests", type=int, default=None, help="requests in the static-vs-continuous workload")
    parser.add_argument("--budget", type=int, default=16 if SIM else 512, help="tokens per step (continuous)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n_requests = args.requests or (24 if SIM else (128 if args.quick else 512))
    t0 = time.time()

    if SIM:
        model, tokenizer, mix, N = tiny_model(), None, SMALL_SERVING_MIX, args.max_batch
        runner = PagedRunner(model, num_blocks=pool_blocks(N, 64, 4), block_size=4, max_context=64)
    else:
        runner, tokenizer = load_runner("target", max_batch=args.max_batch, block_size=16, max_context=1024)
        model, mix, N = runner.model, SERVING_MIX, args.max_batch
    cfg = model.config
    print(f"model: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads (KV {cfg.kv_heads}), "
          f"{model.num_params() / 1e6:.2f} M parameters, {next(model.parameters()).dtype}; {runtime.summary()}")

    failures = check_correctness(model, tokenizer)
    for f in failures:
        print("FAIL", f)
    print(f"[{time.time() - t0:.0f} s]")

    def workload(n, rate, seed):
        return make_requests(n, seed=args.seed + seed, rate=rate, mix=mix, max_context=runner.max_context,
                             **({"tokenizer": tokenizer} if tokenizer else {"vocab_size": cfg.vocab_size}))

    requests = workload(n_requests, None, 0)
    print(f"\nworkload: {describe(requests)}; mix: "
          + "; ".join(f"{m.kind} {m.weight:.0%} (prompt ~{m.prompt_median:g}, output ~{m.output_median:g})"
                      for m in mix))
    kv = runner.memory_bytes()
    print(f"same KV memory for both: {runner.blocks.num_blocks} blocks of {runner.blocks.block_size} tokens "
          f"= {N} x {runner.max_context} tokens = {kv / 1e6:.1f} MB; max batch {N}; token budget {args.budget}")
    fractions = (0.1, 0.3, 1.0) if args.quick or SIM else (0.1, 0.25, 0.5, 1.0)
    per_rate = 16 if SIM else (64 if args.quick else 128)
    print("measuring: warm-up, both policies offline (every request at t=0), then both over arrival rates")
    records, results = measure(runner, workload, max_batch=N, token_budget=args.budget, offline_requests=n_requests,
                               rate_fractions=fractions, per_rate=per_rate,
                               progress=lambda r: print(f"  rate {r.shape['rate']}: {r.kernel} done", flush=True))
    print(format_comparison(results))
    s, c = results["static"], results["continuous"]
    speedup = c.throughput / s.throughput
    print(f"TARGET continuous >= 4x static throughput: {speedup:.2f}x -> {'MET' if speedup >= 4 else 'NOT MET'}")
    print(f"TARGET lower p99 TTFT: {c.ttft_p99:.4g} vs {s.ttft_p99:.4g} {c.unit} -> "
          f"{'MET' if c.ttft_p99 < s.ttft_p99 else 'NOT MET'}")
    print("\nover arrival rate (fractions of the continuous capacity; 'all@0' is the offline run above):")
    print(format_sweep(records))

    meta = run_meta(None)
    meta.update(model="tiny random" if SIM else "target", max_batch=N, token_budget=args.budget,
                block_size=runner.blocks.block_size, kv_bytes=kv, clock=c.unit,
                workload=describe(requests), target_speedup=speedup)
    path = save_records(records, "serving", meta, directory=args.out)
    print(f"\nsaved {path} [{time.time() - t0:.0f} s]")
    if failures:
        print(f"{len(failures)} correctness failure(s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
