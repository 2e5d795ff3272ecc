"""Continuous batching on a GPU in one run of about three minutes: correctness, static vs continuous, a rate sweep.

    PYTHONPATH=. python scripts/gpu/serving.py --out DIR [--quick] [--requests N] [--time-budget S]

1. Correctness (exit 1 on failure), target model in fp32, 16 requests all waiting at t=0 over a
   pool too small for them all (so requests are preempted and recomputed) with a 64-token
   budget (so prompts are chunked and steps mix prefill with decode). Every greedy output
   must equal the model's own greedy output for that request alone (full recompute, no
   cache), except from a step where the reference's top two logits are within TIE (a
   numerical tie; reported); the same for the static baseline; bad requests submitted
   mid-run (empty prompt, longer than the context, max_new_tokens 0 or < 0) must raise
   RequestError and leave the running ones as they were; no block may stay allocated once
   the engine drains.
2. Static vs continuous: same model (data/models/target.safetensors, fp16), same KV memory
   (``max_batch`` x 1024 tokens of paged blocks), same maximum batch, the same workload of
   mixed output lengths (SERVING_MIX: 90% short answers ~20 tokens, 10% long ~450; 256
   requests waiting at t=0). Wall clock, synchronised at every step, after a warm-up that
   compiles every kernel variant. TARGET: continuous >= 4x static throughput, lower p99 TTFT.
3. Both policies over Poisson arrival rates: labkit.serving.bench.SWEEP_FRACTIONS (seven, from
   nearly idle to well past static batching's saturation) of the continuous capacity measured in
   2, each serving the arrivals of SWEEP_WINDOW seconds; rates not started within --time-budget
   are skipped (and said so).

Records of 2 and 3 go to DIR/serving_<gpu>.json; a summary table ends the output. In sim mode
(no GPU) it runs the same stages on a tiny random model and tiny sizes, on the logical clock.
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
from labkit.serving import Engine, Request, RequestError, StaticScheduler, StepClock
from labkit.serving.bench import (SWEEP_FRACTIONS, SWEEP_WINDOW, format_comparison, load_runner, measure, pool_blocks,
                                  warm_up)
from labkit.serving.plots import format_sweep
from labkit.serving.runner import PagedRunner
from labkit.serving.workloads import SERVING_MIX, SMALL_SERVING_MIX, describe, make_requests
from labkit.workload import LengthMix

TIE = 1e-3  # logits closer than this are a tie: fp32 rounding may pick either
CHECK_MIX = (LengthMix("short", 0.7, prompt_median=40, prompt_sigma=0.8, output_median=12, output_sigma=0.6),
             LengthMix("long", 0.3, prompt_median=150, prompt_sigma=0.4, output_median=40, output_sigma=0.4))
SIM = runtime.is_sim()
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:5.1f} s] {msg}", flush=True)


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


def compare_solo(done, reference, label: str) -> tuple[list[str], int]:
    """Failures (outputs that differ from the model alone, away from a tie) and the tie count."""
    failures, ties = [], 0
    for r in done:
        want, gaps = reference[r.request_id]
        if r.output != want:
            i = next(i for i, (a, b) in enumerate(zip(r.output, want)) if a != b)
            if gaps[i] < TIE:
                ties += 1
            else:
                failures.append(f"{label} request {r.request_id}: output differs from the model alone at token {i} "
                                f"(reference top-2 gap {gaps[i]:.3g}): {r.output[:i + 3]} vs {want[:i + 3]}")
    return failures, ties


def leaks(runner) -> list[str]:
    b = runner.blocks
    if b.num_free != b.num_blocks or any(b.tables.values()):
        return [f"{b.num_blocks - b.num_free} blocks leaked after draining"]
    return []


def check_correctness(model, tokenizer) -> tuple[list[str], dict]:
    model = copy.deepcopy(model).float()
    if SIM:
        reqs = make_requests(12, seed=1, mix=SMALL_SERVING_MIX, vocab_size=model.config.vocab_size,
                             max_context=model.config.max_len)
        bs, blocks, max_batch, budget = 4, 10, 4, 8
    else:
        reqs = make_requests(16, seed=1, mix=CHECK_MIX, tokenizer=tokenizer, max_context=model.config.max_len)
        bs, blocks, max_batch, budget = 16, 32, 8, 64
    # A pool too small for everyone at once (preemptions), but big enough for the longest request alone.
    blocks = max(blocks, max(-(-(len(r.prompt) + r.max_new_tokens) // bs) for r in reqs))
    runner = PagedRunner(model, num_blocks=blocks, block_size=bs)
    engine = Engine(runner, max_batch=max_batch, token_budget=budget, clock=StepClock())
    for r in reqs:
        engine.add_request(r)
    for _ in range(3):
        engine.step()
    failures = []
    state = lambda: ([r.request_id for r in engine.scheduler.running], [r.request_id for r in engine.scheduler.waiting],
                     runner.blocks.num_free, [list(r.output) for r in reqs])
    before = state()
    bad_requests = [Request(prompt, n, request_id=f"bad{i}") for i, (prompt, n) in
                    enumerate((([], 4), ([1] * runner.max_context, 4), ([1, 2], 0), ([1, 2], -2)))]
    for bad in bad_requests:
        try:
            engine.add_request(bad)
            failures.append(f"bad request {bad.prompt[:3]}.. x{len(bad.prompt)}, max_new_tokens {bad.max_new_tokens} "
                            f"was accepted")
        except RequestError:
            pass
    if state() != before:
        failures.append("a rejected request changed the engine's queues, blocks or outputs")
    engine.run()
    done = list(engine.finished)  # run() returns only those finished during it, not in the first steps
    reference = {r.request_id: solo_greedy(model, r.prompt, r.max_new_tokens) for r in reqs}
    f, ties = compare_solo(done, reference, "continuous")
    failures += f + leaks(runner)
    preempted = sum(r.num_preemptions for r in done)
    mixed = sum(1 for s in engine.steps if s.prefill_tokens and s.decodes)
    chunked = sum(1 for s in engine.steps if s.prefill_tokens) > sum(1 for r in done if len(r.prompt) > 1)
    log(f"correctness, continuous: {len(done)} requests, {len(engine.steps)} steps, {preempted} preemptions, {mixed} "
        f"steps mixing prefill and decode, prompts chunked: {chunked}; {len(done) - len(f) - ties} identical to "
        f"the model alone, {ties} diverged at a numerical tie (top-2 gap < {TIE}), {len(f)} failures; 4 bad "
        f"requests rejected mid-run")
    if not (preempted and mixed and chunked):
        failures.append("the correctness run did not exercise preemption, chunking and mixed steps")
    # The static baseline over the same runner code (a pool where every batch fits).
    srunner = PagedRunner(model, num_blocks=pool_blocks(max_batch, model.config.max_len, bs), block_size=bs)
    static = Engine(srunner, scheduler=StaticScheduler(srunner.blocks, max_batch=max_batch), clock=StepClock())
    sdone = static.run([r.copy() for r in reqs])
    f2, ties2 = compare_solo(sdone, reference, "static")
    failures += f2 + leaks(srunner)
    log(f"correctness, static: {len(sdone)} requests, {len(static.steps)} steps; {len(sdone) - len(f2) - ties2} "
        f"identical, {ties2} at a tie, {len(f2)} failures")
    summary = dict(requests=len(done), preemptions=preempted, mixed_steps=mixed, ties=ties + ties2,
                   failures=len(failures))
    return failures, summary


class ForwardTimer:
    """Wraps ``runner.forward`` to time each model pass, synchronised (the engine syncs right after
    anyway): a step's time splits into the pass (with its host-side preparation) and the rest
    (scheduling, sampling, bookkeeping)."""

    def __init__(self, runner):
        self.forward, self.times = runner.forward, []
        runner.forward = self

    def __call__(self, work):
        t = time.perf_counter()
        out = self.forward(work)
        if not SIM:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - t)
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/results", help="where to write serving_<gpu>.json")
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke test)")
    parser.add_argument("--max-batch", type=int, default=4 if SIM else 32)
    parser.add_argument("--requests", type=int, default=None, help="requests in the static-vs-continuous workload")
    parser.add_argument("--budget", type=int, default=16 if SIM else 512, help="tokens per step (continuous)")
    parser.add_argument("--time-budget", type=float, default=200.0,
                        help="seconds since the start after which no new arrival rate is started")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n_requests = args.requests or (24 if SIM else (128 if args.quick else 256))

    if SIM:
        model, tokenizer, mix, N = tiny_model(), None, SMALL_SERVING_MIX, args.max_batch
        runner = PagedRunner(model, num_blocks=pool_blocks(N, 64, 4), block_size=4, max_context=64)
    else:
        runner, tokenizer = load_runner("target", max_batch=args.max_batch, block_size=16, max_context=1024)
        model, mix, N = runner.model, SERVING_MIX, args.max_batch
    cfg = model.config
    log(f"model: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads (KV {cfg.kv_heads}), "
        f"{model.num_params() / 1e6:.2f} M parameters, {next(model.parameters()).dtype}; {runtime.summary()}")

    try:
        failures, correctness = check_correctness(model, tokenizer)
    except Exception as e:  # report, and still measure
        failures, correctness = [f"correctness check crashed: {type(e).__name__}: {e}"], {"crashed": str(e)}
    for f in failures:
        print("FAIL", f)

    def workload(n, rate, seed):
        return make_requests(n, seed=args.seed + seed, rate=rate, mix=mix, max_context=runner.max_context,
                             **({"tokenizer": tokenizer} if tokenizer else {"vocab_size": cfg.vocab_size}))

    requests = workload(n_requests, None, 0)
    print(f"\nworkload: {describe(requests)}; mix: "
          + "; ".join(f"{m.kind} {m.weight:.0%} (prompt ~{m.prompt_median:g}, output ~{m.output_median:g})"
                      for m in mix))
    kv = runner.memory_bytes()
    print(f"same KV memory for both: {runner.blocks.num_blocks} blocks of {runner.blocks.block_size} tokens "
          f"= {N} x {runner.max_context} tokens = {kv / 1e6:.1f} MB; max batch {N}; token budget {args.budget} "
          f"(continuous; static prefills each batch whole)")
    # Highest rate first: if time runs short, the lowest (the least telling) is the one skipped.
    # labkit's sweep (SWEEP_FRACTIONS of the continuous capacity, SWEEP_WINDOW of arrivals each).
    fractions = (0.8, 0.22, 0.03) if args.quick else SWEEP_FRACTIONS
    window = 40.0 if SIM else SWEEP_WINDOW  # sim mode: a logical clock, one unit a step
    log("measuring: warm-up, both policies offline (every request at t=0), then both over arrival rates")
    timer = ForwardTimer(runner)
    warm_up(runner, workload, max_batch=N, token_budget=args.budget)
    timer.times.clear()
    forward_ms = {}

    def offline_done(policy, metrics):  # the mean model pass of this policy's offline run
        forward_ms[policy] = 1e3 * sum(timer.times) / len(timer.times)
        timer.times.clear()

    records, offline = measure(runner, workload, max_batch=N, token_budget=args.budget, offline_requests=n_requests,
                               rate_fractions=fractions, window=window, warm=False,
                               progress=lambda r, msg: log("  " + msg), on_offline=offline_done,
                               deadline=T0 + args.time_budget)
    s, c = offline["static"], offline["continuous"]
    speedup = c.throughput / s.throughput
    print("\nover arrival rate (fractions of the continuous capacity; 'all@0' is the offline run):")
    print(format_sweep(records))

    meta = run_meta(None)
    meta.update(model="tiny random" if SIM else "target", max_batch=N, token_budget=args.budget,
                block_size=runner.blocks.block_size, kv_bytes=kv, clock=c.unit, workload=describe(requests),
                target_speedup=speedup, correctness=correctness,
                per_step={p: m.duration / m.steps for p, m in offline.items()},
                forward_ms=forward_ms if c.unit == "s" else None)
    path = save_records(records, "serving", meta, directory=args.out)
    log(f"saved {path}")

    print(f"\nSUMMARY ({'GPU, wall clock' if c.unit == 's' else 'sim mode, logical clock'}): {describe(requests)}")
    print(format_comparison(offline))
    if c.unit == "s":
        for p, m in offline.items():
            step = 1e3 * m.duration / m.steps
            print(f"{p}: {step:.2f} ms/step = model pass {forward_ms[p]:.2f} ms (launches, kernels and their host "
                  f"preparation) + {step - forward_ms[p]:.2f} ms of scheduling, sampling and bookkeeping")
    print(f"TARGET continuous >= 4x static throughput: {speedup:.2f}x -> {'MET' if speedup >= 4 else 'NOT MET'}")
    print(f"TARGET lower p99 TTFT: {c.ttft_p99:.4g} vs {s.ttft_p99:.4g} {c.unit} -> "
          f"{'MET' if c.ttft_p99 < s.ttft_p99 else 'NOT MET'}")
    print(f"correctness: {'PASS' if not failures else f'{len(failures)} FAILURE(S)'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
