"""Continuous batching on a GPU (pytest -m gpu): the serving engine's outputs are the model's.

The target model in fp32, 16 requests all waiting at t=0 over a pool too small for them all (so
requests are preempted and recomputed) with a 64-token budget (so prompts are chunked and steps
mix prefill with decode). Every greedy output must equal the model's own greedy output for that
request alone (full recompute, no cache), except from a step where the reference's top two
logits are within TIE (a numerical tie); the same for the static baseline; bad requests
submitted mid-run must raise RequestError and leave the running ones as they were; no block
may stay allocated once the engine drains. As the GPU script that passed on the H200.
"""

from __future__ import annotations

import copy
import time

import labkit  # noqa: F401  (decides the mode before numba and triton load)
import torch

from labkit import runtime
from labkit.serving import Engine, Request, RequestError, StaticScheduler, StepClock
from labkit.serving.bench import load_runner, pool_blocks
from labkit.serving.runner import PagedRunner
from labkit.serving.workloads import SMALL_SERVING_MIX, make_requests
from labkit.kvcache.workload import LengthMix

TIE = 1e-3  # logits closer than this are a tie: fp32 rounding may pick either
CHECK_MIX = (LengthMix("short", 0.7, prompt_median=40, prompt_sigma=0.8, output_median=12, output_sigma=0.6),
             LengthMix("long", 0.3, prompt_median=150, prompt_sigma=0.4, output_median=40, output_sigma=0.4))
SIM = runtime.is_sim()
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:5.1f} s] {msg}", flush=True)


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


def test_served_outputs_equal_the_model_alone():
    runner, tokenizer = load_runner("target", max_batch=32, block_size=16, max_context=1024)
    failures, _ = check_correctness(runner.model, tokenizer)
    assert failures == []
