"""The serving engine: continuous batching, chunked prefill, preemption, static baseline, metrics.

Most tests drive the real engine and scheduler with the toy runner (instant; its next token
hashes the whole context read back through the block tables, so any scheduling mistake
changes an output). One test runs the real model over the paged cache and the paged Triton
kernel (in the simulator) and compares every output with the model run alone.
"""

from __future__ import annotations

import random

import pytest
import torch

import labkit  # noqa: F401  (mode first)
from labkit.kvcache.allocator import OutOfBlocks
from labkit.serving import (Engine, Request, RequestError, SamplingParams, StaticScheduler, StepClock, ToyRunner,
                            WallClock, admit, schedule_running, static_schedule, summarize)
from labkit.serving.blocks import BlockLedger
from labkit.serving.workloads import SMALL_SERVING_MIX, make_requests


def random_requests(n: int, seed: int, *, vocab: int = 97, max_prompt: int = 30, max_new: int = 40,
                    span: float = 20.0, sampling=None) -> list[Request]:
    rng = random.Random(seed)
    return [Request([rng.randrange(vocab) for _ in range(rng.randint(1, max_prompt))], rng.randint(1, max_new),
                    arrival_time=rng.uniform(0, span), request_id=i,
                    sampling=sampling(i) if sampling else SamplingParams()) for i in range(n)]


def assert_drained(engine: Engine) -> None:
    ledger = engine.blocks
    assert not engine.scheduler.running and not engine.scheduler.waiting
    assert ledger.tables == {} or all(not t for t in ledger.tables.values())
    assert ledger.num_free == ledger.num_blocks, f"{ledger.num_blocks - ledger.num_free} blocks leaked"
    assert ledger.allocator.refcounts() == [0] * ledger.num_blocks


@pytest.mark.parametrize("seed", range(6))
def test_continuous_batching_equals_solo_with_chunks_and_preemption(seed):
    reqs = random_requests(40, seed)
    runner = ToyRunner(num_blocks=24, block_size=4)  # 96 token slots for up to 6 requests of up to 70: preemption
    engine = Engine(runner, max_batch=6, token_budget=16, clock=StepClock())
    seen = []
    original = engine.runner.forward

    def spy(work):
        assert sum(len(w.tokens) for w in work) <= 16
        seen.extend((w.request.request_id, w.start, len(w.tokens), len(w.request.prompt)) for w in work)
        return original(work)

    engine.runner.forward = spy
    done = engine.run([r.copy() for r in reqs])
    assert sorted(r.request_id for r in done) == list(range(40))
    solo = ToyRunner(num_blocks=1)
    for r in done:
        assert r.output == solo.generate(r.prompt, r.max_new_tokens), f"request {r.request_id}"
        assert r.first_token_time >= r.arrival_time
    assert_drained(engine)
    # The run did exercise what it claims to: chunked prefills and preemptions.
    assert any(start == 0 and n < prompt for _, start, n, prompt in seen), "no prompt was chunked"
    assert sum(r.num_preemptions for r in done) > 0, "nothing was preempted"
    m = summarize(done, engine.steps, max_batch=6, unit="steps")
    assert m.recomputed_tokens == runner.tokens_run - sum(len(r.prompt) + len(r.output) - 1 for r in done) > 0
    assert max(s.running for s in engine.steps) <= 6


def test_static_baseline_equals_solo_and_matches_its_step_count():
    reqs = random_requests(23, 7, span=0.0)  # all waiting at time 0
    runner = ToyRunner(num_blocks=23 * 18, block_size=4)
    engine = Engine(runner, scheduler=StaticScheduler(runner.blocks, max_batch=5), clock=StepClock())
    done = engine.run([r.copy() for r in reqs])
    solo = ToyRunner(num_blocks=1)
    assert all(r.output == solo.generate(r.prompt, r.max_new_tokens) for r in done)
    steps, idle = static_schedule([r.max_new_tokens for r in reqs], 5)
    assert len(engine.steps) == steps
    busy = sum(s.running for s in engine.steps)
    assert idle == pytest.approx(1 - busy / (5 * steps))
    # Static batching never starts a request while its batch runs.
    for s in engine.steps:
        assert s.admitted == 0 or s.running == s.admitted
    assert_drained(engine)


def test_continuous_beats_static_on_mixed_output_lengths():
    reqs = make_requests(64, seed=3, mix=SMALL_SERVING_MIX, vocab_size=97, max_context=256)
    results = {}
    for name in ("static", "continuous"):
        runner = ToyRunner(num_blocks=8 * 64 // 4, block_size=4)  # same memory: 8 x 64 tokens
        sched = StaticScheduler(runner.blocks, max_batch=8) if name == "static" else None
        engine = Engine(runner, max_batch=8, token_budget=64, scheduler=sched, clock=StepClock())
        results[name] = summarize(engine.run([r.copy() for r in reqs]), engine.steps, max_batch=8, unit="steps")
    assert results["continuous"].throughput > 1.5 * results["static"].throughput
    assert results["continuous"].ttft_p99 < results["static"].ttft_p99
    assert results["continuous"].occupancy > results["static"].occupancy


def test_real_model_over_paged_cache_equals_model_alone():
    from labkit.serving.runner import PagedRunner

    model = tiny_model()
    rng = random.Random(1)
    reqs = [Request([rng.randrange(40) for _ in range(n)], m, arrival_time=t, request_id=i)
            for i, (n, m, t) in enumerate([(13, 6, 0), (1, 9, 0), (7, 1, 1), (21, 5, 2), (3, 8, 3), (30, 4, 6)])]
    runner = PagedRunner(model, num_blocks=9, block_size=4)  # 36 slots: the 34-token request forces preemption
    engine = Engine(runner, max_batch=3, token_budget=8, clock=StepClock())
    done = engine.run([r.copy() for r in reqs])
    solo = solo_outputs(model, done)
    for r in done:
        assert r.output == solo[r.request_id], f"request {r.request_id}"
    assert sum(r.num_preemptions for r in done) > 0
    assert any(s.prefill_tokens and s.decodes for s in engine.steps), "no step mixed prefill and decode"
    assert_drained(engine)


@pytest.mark.parametrize("bad, why", [
    (dict(prompt=[]), "empty"),
    (dict(prompt=[1] * 70), "longer than the context"),
    (dict(prompt=[1] * 64), "longer than the context"),  # no room left for a single new token
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=-3), "max_new_tokens"),
    (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(prompt=[1, 2, 3], max_new_tokens=62), "exceeds max_context"),
    (dict(prompt=[1, 200]), "token ids"),
    (dict(prompt=[1, -1]), "token ids"),
    (dict(prompt="hello"), "not text"),
    (dict(arrival_time=float("nan")), "arrival_time"),
    (dict(request_id=0), "already being served"),
])
def test_bad_requests_are_rejected_without_disturbing_the_running_ones(bad, why):
    reqs = random_requests(8, 11, max_prompt=12, max_new=10, span=2.0)
    runner = ToyRunner(num_blocks=12, block_size=4, max_context=64)
    engine = Engine(runner, max_batch=3, token_budget=8, clock=StepClock())
    for r in reqs:
        engine.add_request(r)
    for _ in range(4):
        engine.step()
    before = ([r.request_id for r in engine.scheduler.running], [r.request_id for r in engine.scheduler.waiting],
              runner.blocks.num_free, [list(r.output) for r in reqs])
    fields = dict(prompt=[1, 2, 3], max_new_tokens=4, request_id="new")
    fields.update(bad)
    with pytest.raises(RequestError, match=why):
        engine.add_request(Request(**fields))
    after = ([r.request_id for r in engine.scheduler.running], [r.request_id for r in engine.scheduler.waiting],
             runner.blocks.num_free, [list(r.output) for r in reqs])
    assert after == before
    engine.run()
    solo = ToyRunner(num_blocks=1)
    assert all(r.output == solo.generate(r.prompt, r.max_new_tokens) for r in reqs)
    assert_drained(engine)


def test_bad_sampling_and_oversized_requests():
    with pytest.raises(RequestError, match="temperature"):
        SamplingParams(temperature=-1.0)
    with pytest.raises(RequestError, match="top_p"):
        SamplingParams(temperature=1.0, top_p=0.0)
    runner = ToyRunner(num_blocks=4, block_size=4, max_context=64)  # the whole pool: 16 tokens
    engine = Engine(runner, max_batch=2, token_budget=8)
    with pytest.raises(RequestError, match="more than the whole pool"):
        engine.add_request(Request([1] * 10, 10))
    with pytest.raises(ValueError, match="watermark"):
        Engine(runner, max_batch=2, token_budget=8, watermark=3)


def test_streaming_delivers_every_token_in_order():
    reqs = random_requests(10, 5, max_new=12)
    got = {}
    for r in reqs:
        r.on_token = lambda req, tok: got.setdefault(req.request_id, []).append(tok)
    engine = Engine(ToyRunner(num_blocks=40, block_size=4), max_batch=4, token_budget=12, clock=StepClock())
    events = list(engine.stream(reqs))
    by_id = {}
    for e in events:
        assert e.index == len(by_id.setdefault(e.request_id, []))
        by_id[e.request_id].append(e.token)
        assert e.finished == (e.index == reqs[e.request_id].max_new_tokens - 1)
    for r in reqs:
        assert by_id[r.request_id] == got[r.request_id] == r.output
    times = [e.time for e in events]
    assert times == sorted(times)


def test_seeded_sampling_does_not_depend_on_the_batch():
    params = lambda i: SamplingParams(temperature=1.3, top_k=20, top_p=0.9, seed=100 + i)
    reqs = random_requests(12, 9, sampling=params)
    outputs = []
    for max_batch, budget in ((1, 64), (5, 9)):
        engine = Engine(ToyRunner(num_blocks=60, block_size=4), max_batch=max_batch, token_budget=budget)
        outputs.append({r.request_id: r.output for r in engine.run([r.copy() for r in reqs])})
    assert outputs[0] == outputs[1]
    greedy = ToyRunner(num_blocks=1)
    assert any(outputs[0][r.request_id] != greedy.generate(r.prompt, r.max_new_tokens) for r in reqs)


def test_metrics_on_the_logical_clock():
    # One request alone: prompt in step 1 (first token at t=1), then one token a step.
    engine = Engine(ToyRunner(num_blocks=8, block_size=4), max_batch=2, token_budget=16, clock=StepClock())
    late = Request([5, 6, 7], 4, arrival_time=10.0, request_id="a")
    m = summarize(engine.run([late]), engine.steps, max_batch=2, unit="steps")
    assert (m.ttft_p50, m.tpot_p50, m.steps, m.output_tokens) == (1.0, 1.0, 4, 4)
    assert m.duration == 4.0 and m.throughput == 1.0 and m.occupancy == 0.5
    assert engine.steps[0].start == 10.0  # the idle clock jumped to the arrival


def test_wall_clock_runs_and_orders_times():
    engine = Engine(ToyRunner(num_blocks=40, block_size=4), max_batch=4, token_budget=12,
                    clock=WallClock(sync=False))
    done = engine.run(random_requests(6, 2, span=0.001))
    assert all(r.arrival_time <= r.first_token_time <= r.finish_time for r in done)
    assert engine.clock.unit == "s"


def test_policies_respect_budget_slots_fcfs_and_preempt_the_newest():
    ledger = BlockLedger(6, 4)
    waiting = [Request([1] * n, 5, request_id=i) for i, n in enumerate([3, 9, 2, 1])]
    got = admit(waiting, budget=10, free_slots=3, blocks=ledger, watermark=1)
    assert [(r.request_id, n) for r, n in got] == [(0, 3), (1, 7)]  # request 1 chunked to the budget left
    assert ledger.held(waiting[0]) == 1 and ledger.held(waiting[1]) == 2
    # request 2 doesn't fit the budget: nothing after it is admitted either (FCFS)
    assert admit(waiting[2:], budget=0, free_slots=3, blocks=ledger) == []
    # Running requests grow; when the pool is empty the newest one is preempted.
    running = [waiting[0], waiting[1]]
    for r, n in got:
        r.num_computed = n
    waiting[0].output = [1, 2]  # request 0 now owes 2 tokens and needs a 2nd block
    ledger.ensure(waiting[2], 12)  # someone else holds the other 3 blocks
    assert ledger.num_free == 0
    scheduled, preempted = schedule_running(running, budget=8, blocks=ledger)
    assert preempted == [waiting[1]] and [(r.request_id, n) for r, n in scheduled] == [(0, 2)]
    assert ledger.held(waiting[1]) == 0 and ledger.held(waiting[0]) == 2
    with pytest.raises(OutOfBlocks):
        ledger.ensure(waiting[3], 100)


def test_preemption_takes_the_newest_running_requests_first():
    ledger = BlockLedger(6, 4)
    running = [Request([1] * 4, 9, request_id=i) for i in range(3)]  # oldest first
    for r in running:
        ledger.ensure(r, 4)
        r.output, r.num_computed = [7], 4  # each owes one token, which needs a second block
    ledger.ensure(Request([1], 1, request_id="x"), 12)  # the other 3 blocks are taken
    scheduled, preempted = schedule_running(running, budget=16, blocks=ledger)
    assert [r.request_id for r in preempted] == [2, 1]
    assert [(r.request_id, n) for r, n in scheduled] == [(0, 1)]
    assert ledger.held(running[0]) == 2 and ledger.held(running[1]) == ledger.held(running[2]) == 0


def test_a_policy_that_plans_nothing_is_reported():
    engine = Engine(ToyRunner(num_blocks=8, block_size=4), max_batch=2, token_budget=8,
                    admit=lambda waiting, **kw: [])
    engine.add_request(Request([1, 2], 3))
    with pytest.raises(RuntimeError, match="can't make progress"):
        engine.step()


def test_abort_frees_the_request_and_leaves_the_others_alone():
    reqs = random_requests(10, 4, max_new=20, span=3.0)
    runner = ToyRunner(num_blocks=30, block_size=4)
    engine = Engine(runner, max_batch=4, token_budget=12, clock=StepClock())
    for r in reqs:
        engine.add_request(r)
    for _ in range(5):
        engine.step()
    victims = [engine.scheduler.running[0], engine.scheduler.waiting[-1]]
    for v in victims:
        assert engine.abort(v.request_id) is v
    assert runner.blocks.held(victims[0]) == 0
    with pytest.raises(RequestError, match="not being served"):
        engine.abort(victims[0].request_id)
    done = engine.run()
    solo = ToyRunner(num_blocks=1)
    assert sorted(r.request_id for r in done) == sorted(r.request_id for r in reqs if r not in victims)
    assert all(r.output == solo.generate(r.prompt, r.max_new_tokens) for r in done)
    assert_drained(engine)


def tiny_model(heads=(4, 2)):
    """A 1-layer model of 40 tokens and 48 positions, logits sharpened so greedy choices sit far from ties."""
    from labkit.model import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=40, d_model=32, n_layers=1, n_heads=heads[0], n_kv_heads=heads[1],
                                    max_len=48)).eval()
    with torch.no_grad():  # sharper logits than the init's: greedy choices far from ties
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(8.0)
    return model


def solo_outputs(model, requests) -> dict:
    """``{request_id: greedy tokens}`` of the model run alone on each request, no cache."""
    solo = {}
    with torch.no_grad():
        for r in requests:
            tokens = list(r.prompt)
            for _ in range(r.max_new_tokens):
                tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
            solo[r.request_id] = tokens[len(r.prompt):]
    return solo


def test_real_model_wide_batch_and_static_baseline_equal_model_alone():
    from labkit.serving.runner import PagedRunner

    model = tiny_model(heads=(2, 1))  # few heads: the simulated kernel runs one program per row and head
    rng = random.Random(2)
    reqs = [Request([rng.randrange(40) for _ in range(rng.randint(1, 8))], rng.randint(1, 4), request_id=i)
            for i in range(12)]
    solo = solo_outputs(model, reqs)
    # max_batch 10: more rows than the runner's first block-table mirror holds (8), so it grows;
    # 13 blocks of 4 for up to 10 requests of up to 12 tokens: a preemption, and mirror rows reused.
    runner = PagedRunner(model, num_blocks=13, block_size=4)
    engine = Engine(runner, max_batch=10, token_budget=24, clock=StepClock())
    done = engine.run([r.copy() for r in reqs])
    assert {r.request_id: r.output for r in done} == solo
    assert sum(r.num_preemptions for r in done) > 0 and max(s.running for s in engine.steps) > 8
    assert_drained(engine)
    assert runner._rows == {}, "a finished request kept its block-table mirror row"
    static = Engine(runner, scheduler=StaticScheduler(runner.blocks, max_batch=4), clock=StepClock())
    assert {r.request_id: r.output for r in static.run([r.copy() for r in reqs])} == solo
    assert_drained(static)


def test_runner_refuses_tokens_outside_their_blocks():
    from labkit.serving.runner import PagedRunner, Work

    runner = PagedRunner(tiny_model(heads=(2, 1)), num_blocks=4, block_size=4)
    r = Request([1, 2, 3, 4, 5], 3, request_id="a")
    runner.blocks.ensure(r, 4)  # one block: room for 4 of the 5 prompt tokens
    with pytest.raises(RuntimeError, match="didn't give it the blocks"):
        runner.forward([Work(r, 0, r.prompt, True)])
    with pytest.raises(ValueError, match="at least one"):
        runner.forward([])


def test_arrived_requests_stay_a_prefix_of_the_waiting_queue():
    # The scheduler shows admit() only the head of the queue: that is right only if every
    # arrived request comes before every one still to arrive, through preemptions and late adds.
    engine = Engine(ToyRunner(num_blocks=24, block_size=4), max_batch=6, token_budget=16, clock=StepClock())
    reqs = random_requests(40, 8)
    for r in reqs[:30]:
        engine.add_request(r)
    steps = 0
    while engine.has_work():
        engine.step()
        steps += 1
        if steps == 10:
            for r in reqs[30:]:  # submitted late, some with arrival times already past
                engine.add_request(r)
        now = engine.clock.now()
        arrived = [r.arrival_time <= now for r in engine.scheduler.waiting]
        assert arrived == sorted(arrived, reverse=True), f"step {steps}: an arrived request queues behind a later one"
    assert sum(r.num_preemptions for r in reqs) > 0
    assert_drained(engine)
