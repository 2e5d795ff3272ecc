"""Section ``serving`` (notebook 07): continuous batching against static batching.

On a GPU (as recorded): the target model in fp16 behind the paged cache, the same KV memory
(32 × 1024 tokens of 16-token blocks) and maximum batch (32) for both policies, a 512-token
step budget for continuous batching, 512 requests of mixed output lengths all waiting at t=0,
then both policies over Poisson arrival rates at 100%, 50% and 25% of the continuous capacity
(rates not started within 100 s are skipped). Wall clock, after a warm-up that compiles every
kernel. ``quick``: 128 requests, two rates. Sim mode: the scheduler on a deterministic stand-in
model (:class:`~labkit.serving.toy.ToyRunner`) and the logical clock, a pool too small for every
request at once: both policies must give each request the model's own greedy output and free
every block.
"""

from __future__ import annotations

import time

from labkit import runtime
from labkit.bench.records import Record
from labkit.bench.sections import SectionFailed, headline

TITLE = "continuous batching"
NOTEBOOKS = "07"
RESULTS = "serving"
TIME_BUDGET_S = 100.0


def check_policies(runner, requests, *, max_batch: int, token_budget: int) -> list[str]:
    """Both policies serve every request with the runner's own greedy output, and free every block."""
    from labkit.serving import Engine, StaticScheduler, StepClock

    failures = []
    for policy in ("static", "continuous"):
        scheduler = StaticScheduler(runner.blocks, max_batch=max_batch) if policy == "static" else None
        engine = Engine(runner, max_batch=max_batch, token_budget=token_budget, scheduler=scheduler, clock=StepClock())
        done = engine.run([r.copy(on_token=None) for r in requests])
        if len(done) != len(requests):
            failures.append(f"{policy}: {len(done)} of {len(requests)} requests finished")
        wrong = [r.request_id for r in done if list(r.output) != runner.generate(list(r.prompt), r.max_new_tokens)]
        if wrong:
            failures.append(f"{policy}: requests {wrong[:5]} differ from the model's own greedy output")
        b = runner.blocks
        if b.num_free != b.num_blocks or any(b.tables.values()):
            failures.append(f"{policy}: {b.num_blocks - b.num_free} blocks leaked after draining")
    return failures


def run(quick: bool = False, *, roofline_gbps: float | None = None, progress: bool = True) -> list[Record]:
    """Static vs continuous batching (GPU: measured; sim: checked on a tiny model)."""
    from tqdm.auto import tqdm

    from labkit.serving.bench import SWEEP_FRACTIONS, load_runner, measure, pool_blocks
    from labkit.serving.toy import ToyRunner
    from labkit.serving.workloads import SERVING_MIX, SMALL_SERVING_MIX, make_requests

    sim = runtime.is_sim()
    if sim:  # the scheduler's logic on a deterministic stand-in model (the paged kernel: section paged)
        max_batch, budget, mix, tokenizer = 4, 16, SMALL_SERVING_MIX, None
        runner = ToyRunner(num_blocks=pool_blocks(max_batch, 64, 4) // 2, block_size=4, max_context=64)
        n, fractions, per_rate = (12, (1.0,), 8) if quick else (24, (1.0, 0.5), 16)
    else:
        max_batch, budget, mix = 32, 512, SERVING_MIX
        runner, tokenizer = load_runner("target", max_batch=max_batch, block_size=16, max_context=1024)
        # notebook 07's sweep: arrival rates from idle to past static batching's saturation, each
        # serving SWEEP_WINDOW seconds of arrivals (labkit.serving.bench.requests_for_rate)
        n, fractions, per_rate = (128, (0.8, 0.22, 0.03), None) if quick else (256, SWEEP_FRACTIONS, None)
    vocab = runner.vocab_size if sim else runner.model.config.vocab_size

    def workload(count, rate, seed):
        return make_requests(count, seed=seed, rate=rate, mix=mix, max_context=runner.max_context,
                             **({"tokenizer": tokenizer} if tokenizer else {"vocab_size": vocab}))

    bar = tqdm(total=2 + 2 * len(fractions), desc="serving", disable=not progress, leave=False)
    records, offline = measure(runner, workload, max_batch=max_batch, token_budget=budget, offline_requests=n,
                               rate_fractions=fractions, per_rate=per_rate, warm=not sim,
                               progress=lambda r, msg: bar.update(),
                               deadline=time.monotonic() + TIME_BUDGET_S * (1 if quick else 2.5))
    bar.close()
    failures = [f"{p}: {m.requests} of {n} requests finished" for p, m in offline.items() if m.requests != n]
    if sim:
        failures += check_policies(runner, workload(n, None, 5), max_batch=max_batch, token_budget=budget)
    if failures:
        raise SectionFailed(failures, records)
    return records


def summary(records: list[Record]) -> dict | None:
    from labkit.serving.bench import offline_results

    offline = offline_results(records)
    s, c = offline.get("static"), offline.get("continuous")
    if not s or not c or not s.throughput:
        return None
    ratio = c.throughput / s.throughput
    return headline(f"continuous {ratio:.2f}× static throughput; p99 time to first token {c.ttft_p99:.3g} vs "
                    f"{s.ttft_p99:.3g} {c.unit}", ratio, "× static throughput", "continuous vs static batching")


def show(records: list[Record], source: str) -> None:
    from labkit.serving.bench import format_comparison, offline_results
    from labkit.serving.plots import format_sweep

    print(f"continuous batching ({source}):")
    print(format_comparison(offline_results(records)))
    print(format_sweep(records))


__all__ = ["NOTEBOOKS", "RESULTS", "TITLE", "run", "show", "summary"]
