"""Checks for notebook 07: continuous batching.

The exercises are the scheduler's decisions, written as plain functions over requests and a
:class:`~labkit.serving.blocks.BlockLedger`. Each check compares the student's function with
labkit's on fresh random scenarios (the same scenario built twice, so both start from the
same state), then plugs it into the real engine with the toy runner and checks that every
request's output equals its output alone and that no block leaks.
"""

from __future__ import annotations

import random

from labkit.checks._guard import reject_labkit
from labkit.checks.core import fresh_seed, run_check
from labkit.serving import Engine, Request, StepClock, ToyRunner
from labkit.serving.blocks import BlockLedger
from labkit.serving.scheduler import admit as ref_admit
from labkit.serving.scheduler import schedule_running as ref_schedule_running
from labkit.serving.static import static_schedule as ref_static_schedule

# ---------------------------------------------------------------------------------------------
# 07.static_schedule


def _static_case(student_fn, lengths, max_batch):
    got = student_fn(list(lengths), max_batch)
    want = ref_static_schedule(list(lengths), max_batch)
    if not (isinstance(got, tuple) and len(got) == 2):
        raise AssertionError(f"expected (steps, idle_fraction), got {got!r}")
    if got[0] != want[0] or not abs(got[1] - want[1]) <= 1e-9:
        raise AssertionError(f"output lengths {list(lengths)}, max_batch={max_batch}: yours (steps, idle) = "
                             f"{got!r}, expected {want!r}")


def check_static_schedule(student_fn) -> None:
    """``student_fn(output_lengths, max_batch) -> (steps, idle_fraction)``."""
    reject_labkit(student_fn, '07.static_schedule', SOLUTIONS)
    rng = random.Random(fresh_seed())

    def engine_agrees():
        lengths = [rng.randint(1, 12) for _ in range(rng.randint(5, 14))]
        n = rng.randint(2, 4)
        runner = ToyRunner(num_blocks=64, block_size=4)
        from labkit.serving.static import StaticScheduler

        engine = Engine(runner, scheduler=StaticScheduler(runner.blocks, max_batch=n), clock=StepClock())
        engine.run([Request([1, 2], m, request_id=i) for i, m in enumerate(lengths)])
        busy = sum(s.running for s in engine.steps)
        got = student_fn(list(lengths), n)
        want = (len(engine.steps), 1 - busy / (n * len(engine.steps)))
        if got[0] != want[0] or not abs(got[1] - want[1]) <= 1e-9:
            raise AssertionError(f"the engine took {want[0]} steps with {want[1]:.3f} of slot-steps idle for "
                                 f"lengths {lengths}, max_batch={n}; yours says {got!r}")

    run_check("07.static_schedule", [
        ("one batch lasts as long as its longest output", lambda: _static_case(
            student_fn, [rng.randint(1, 9) for _ in range(4)] + [rng.randint(20, 40)], 5)),
        ("equal lengths, full batches: no idle slot", lambda: _static_case(student_fn, [7] * 6, 3)),
        ("the last batch is partial (its empty slots are idle)", lambda: _static_case(
            student_fn, [rng.randint(1, 30) for _ in range(rng.choice([7, 11, 13]))], 4)),
        ("a batch of one", lambda: _static_case(student_fn, [rng.randint(1, 9) for _ in range(5)], 1)),
        ("random workloads", lambda: _static_case(
            student_fn, [rng.randint(1, 200) for _ in range(rng.randint(10, 60))], rng.randint(2, 16))),
        ("agrees with the static engine", engine_agrees),
    ])


# ---------------------------------------------------------------------------------------------
# Scenarios shared by the scheduler checks: the same state built twice.


def _scenario(seed: int, *, n_waiting=0, n_running=0, block_size=4, num_blocks=12, others=0):
    """A ledger and requests: ``n_running`` admitted ones (some decoding, some mid-prefill), holding
    the blocks for what they computed; ``others`` blocks held by a request outside the lists."""
    rng = random.Random(seed)
    ledger = BlockLedger(num_blocks, block_size)
    if others:
        ledger.ensure(Request([0], 1, request_id="other"), others * block_size)
    running = []
    for i in range(n_running):
        r = Request([rng.randrange(50) for _ in range(rng.randint(1, 9))], 30, request_id=f"r{i}")
        if len(r.prompt) == 1 or rng.random() < 0.6:  # decoding: everything but the last sampled token cached
            r.output = [rng.randrange(50) for _ in range(rng.randint(1, 5))]
            r.num_computed = r.num_tokens - 1
        else:  # mid-prefill: a first chunk of the prompt is cached
            r.num_computed = rng.randint(1, len(r.prompt) - 1)
        if ledger.needed(r, r.num_computed) <= ledger.num_free:
            ledger.ensure(r, r.num_computed)
            running.append(r)
    waiting = [Request([rng.randrange(50) for _ in range(rng.randint(1, 12))], 5, request_id=f"w{i}")
               for i in range(n_waiting)]
    return ledger, running, waiting


def _ids(pairs):
    return [(getattr(r, "request_id", r), n) for r, n in pairs]


def _held(ledger) -> dict:
    return {str(k): len(v) for k, v in ledger.tables.items() if v}


def _find_case(run_reference, require, tries: int = 200):
    """A fresh seed whose scenario shows the property (``require(reference result)``)."""
    rng = random.Random(fresh_seed())
    for _ in range(tries):
        seed = rng.randrange(1 << 30)
        if require(run_reference(seed)):
            return seed
    raise RuntimeError("could not build a scenario for this property (a bug in the check)")


def _end_to_end(**policies):
    """The engine with the student's policy on a tight pool: outputs equal solo, no leaked block."""
    rng = random.Random(fresh_seed())
    requests = [Request([rng.randrange(97) for _ in range(rng.randint(1, 24))], rng.randint(1, 24),
                        arrival_time=rng.uniform(0, 15), request_id=i) for i in range(24)]
    runner = ToyRunner(num_blocks=16, block_size=4)
    engine = Engine(runner, max_batch=5, token_budget=12, clock=StepClock(), **policies)
    done = engine.run(requests)
    if len(done) != len(requests):
        raise AssertionError(f"{len(requests) - len(done)} requests never finished")
    solo = ToyRunner(num_blocks=1)
    for r in done:
        want = solo.generate(r.prompt, r.max_new_tokens)
        if r.output != want:
            raise AssertionError(f"request {r.request_id} (prompt of {len(r.prompt)}) generated {r.output} "
                                 f"but alone it generates {want}")
    if runner.blocks.num_free != runner.blocks.num_blocks:
        raise AssertionError(f"{runner.blocks.num_blocks - runner.blocks.num_free} blocks leaked after the "
                             f"engine drained")


# ---------------------------------------------------------------------------------------------
# 07.admit


def _admit_case(student_fn, require=lambda want: True, *, budget, free_slots, watermark=0, **scenario):
    def reference(seed):
        ledger, _, waiting = _scenario(seed, **scenario)
        return ref_admit(waiting, budget=budget, free_slots=free_slots, blocks=ledger, watermark=watermark), ledger

    seed = _find_case(reference, lambda out: require(out[0]))
    want, ledger_e = reference(seed)
    ledger, _, waiting = _scenario(seed, **scenario)
    where = (f"\n(budget={budget}, free_slots={free_slots}, watermark={watermark}; {ledger.num_free} of "
             f"{ledger.num_blocks} blocks of {ledger.block_size} tokens free; waiting prompts of "
             f"{[len(r.prompt) for r in waiting]} tokens)")
    got = student_fn(waiting, budget=budget, free_slots=free_slots, blocks=ledger, watermark=watermark)
    if not isinstance(got, list):
        raise AssertionError(f"expected a list of (request, num_tokens), got {got!r}")
    if _ids(got) != _ids(want):
        raise AssertionError(f"admitted (request, tokens): yours {_ids(got)} vs expected {_ids(want)}" + where)
    if _held(ledger) != _held(ledger_e):
        raise AssertionError(f"blocks held afterwards: yours {_held(ledger)} vs expected {_held(ledger_e)} "
                             f"(take each admitted chunk's blocks with blocks.ensure)" + where)


def _chunked(want) -> bool:
    return any(n < r.num_pending for r, n in want)


def check_admit(student_fn) -> None:
    """``student_fn(waiting, *, budget, free_slots, blocks, watermark) -> [(request, num_tokens)]``."""
    reject_labkit(student_fn, '07.admit', SOLUTIONS)
    run_check("07.admit", [
        ("admits in arrival order while slots last",
         lambda: _admit_case(student_fn, lambda w: len(w) == 2, budget=200, free_slots=2, n_waiting=5,
                             num_blocks=40)),
        ("chunks the prompt that meets the end of the budget",
         lambda: _admit_case(student_fn, _chunked, budget=13, free_slots=8, n_waiting=6, num_blocks=40)),
        ("stops at the first request whose blocks aren't free (no queue jumping)",
         lambda: _admit_case(student_fn, lambda w: 0 < len(w) < 8, budget=200, free_slots=8, n_waiting=8,
                             num_blocks=9, others=2)),
        ("keeps the watermark free",
         lambda: _admit_case(student_fn, lambda w: len(w) < 8, budget=200, free_slots=8, watermark=3, n_waiting=8,
                             num_blocks=12)),
        ("admits nothing with no budget or no slot", lambda: (
            _admit_case(student_fn, budget=0, free_slots=4, n_waiting=3),
            _admit_case(student_fn, budget=50, free_slots=0, n_waiting=3))),
        ("in the engine: every output equals the request run alone, no block leaked",
         lambda: _end_to_end(admit=student_fn)),
    ])


# ---------------------------------------------------------------------------------------------
# 07.schedule_running


def _running_case(student_fn, require=lambda want: True, *, budget, **scenario):
    def reference(seed):
        ledger, running, _ = _scenario(seed, **scenario)
        return ref_schedule_running(list(running), budget=budget, blocks=ledger), ledger

    seed = _find_case(reference, lambda out: require(out[0]))
    want, ledger_e = reference(seed)
    ledger, running, _ = _scenario(seed, **scenario)
    where = (f"\n(budget={budget}; running requests {[r.request_id for r in running]} owe "
             f"{[r.num_pending for r in running]} tokens, have {[r.num_computed for r in running]} cached and hold "
             f"{[ledger.held(r) for r in running]} blocks of {ledger.block_size}; {ledger.num_free} blocks free)")
    got = student_fn(list(running), budget=budget, blocks=ledger)
    if not (isinstance(got, tuple) and len(got) == 2):
        raise AssertionError(f"expected (scheduled, preempted), got {got!r}")
    if _ids(got[0]) != _ids(want[0]):
        raise AssertionError(f"scheduled (request, tokens): yours {_ids(got[0])} vs expected {_ids(want[0])}" + where)
    if [r.request_id for r in got[1]] != [r.request_id for r in want[1]]:
        raise AssertionError(f"preempted: yours {[r.request_id for r in got[1]]} vs expected "
                             f"{[r.request_id for r in want[1]]}" + where)
    if _held(ledger) != _held(ledger_e):
        raise AssertionError(f"blocks held afterwards: yours {_held(ledger)} vs expected {_held(ledger_e)} "
                             f"(grow with blocks.ensure; free a preempted request's blocks)" + where)


def check_schedule_running(student_fn) -> None:
    """``student_fn(running, *, budget, blocks) -> (scheduled, preempted)``."""
    reject_labkit(student_fn, '07.schedule_running', SOLUTIONS)
    run_check("07.schedule_running", [
        ("every running request gets its pending tokens, oldest first",
         lambda: _running_case(student_fn, lambda w: not w[1] and len(w[0]) >= 4, budget=500, n_running=5,
                               num_blocks=60)),
        ("the budget runs out: later requests wait, keeping their blocks",
         lambda: _running_case(student_fn, lambda w: not w[1] and 0 < len(w[0]) < 5, budget=4, n_running=6,
                               num_blocks=60)),
        ("out of blocks: the newest running requests are preempted",
         lambda: _running_case(student_fn, lambda w: len(w[1]) >= 1 and len(w[0]) >= 2, budget=500,
                               n_running=6, num_blocks=12)),
        ("the only request that can't grow preempts itself",
         lambda: _running_case(student_fn, lambda w: len(w[1]) == 1 and not w[0], budget=500, n_running=1,
                               num_blocks=4, others=3)),
        ("in the engine: every output equals the request run alone, no block leaked",
         lambda: _end_to_end(schedule_running=student_fn)),
    ])


# The labkit objects that implement each exercise: an answer that is one of them fails.
SOLUTIONS = {
    '07.static_schedule': ('labkit.serving.static:static_schedule', 'labkit.serving.static:StaticScheduler'),
    '07.admit': ('labkit.serving.scheduler:admit', 'labkit.serving.scheduler:Scheduler'),
    '07.schedule_running': ('labkit.serving.scheduler:schedule_running', 'labkit.serving.scheduler:Scheduler'),
}
