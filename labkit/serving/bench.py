"""Static batching against continuous batching: same model, same KV memory, same maximum batch.

:func:`compare` serves one workload with both schedulers; :func:`sweep_rates` does it at
several Poisson arrival rates and returns :class:`~labkit.bench.records.Record` s (one per
policy and rate) with the serving metrics in ``extra``. On a GPU the engine's clock is the
wall clock, synchronised at every step; in sim mode it is the logical clock (steps), and the
notebook shows the recorded GPU results (``data/results/serving_*.json``) instead.

"Same KV memory" means the paged pool holds exactly what a static server preallocates:
``max_batch`` sequences of ``max_context`` tokens (:func:`pool_blocks`).
"""

from __future__ import annotations

import math
import time

from labkit import runtime
from labkit.bench.records import Record
from labkit.serving.blocks import blocks_for
from labkit.serving.clock import default_clock
from labkit.serving.engine import Engine
from labkit.serving.metrics import Metrics, summarize
from labkit.serving.static import StaticScheduler

POLICIES = ("static", "continuous")
RESULTS_PATTERN = "serving_*.json"
METRICS = {  # what the plots and the explorer can show: key -> (label, unit kind)
    "throughput": ("throughput, output tokens", "rate"),
    "ttft_p50": ("time to first token, p50", "time"),
    "ttft_p99": ("time to first token, p99", "time"),
    "tpot_p50": ("time per output token, p50", "time"),
    "tpot_p99": ("time per output token, p99", "time"),
    "occupancy": ("batch occupancy (mean)", "fraction"),
}


def pool_blocks(max_batch: int, max_context: int, block_size: int) -> int:
    """Blocks holding ``max_batch`` sequences of ``max_context`` tokens: static batching's KV memory."""
    return max_batch * blocks_for(max_context, block_size)


def load_runner(model="target", *, max_batch: int, block_size: int = 16, max_context: int | None = None,
                num_blocks: int | None = None, dtype=None):
    """A :class:`~labkit.serving.runner.PagedRunner` over a shipped model (or a model object) and its tokenizer.

    The pool defaults to :func:`pool_blocks` (``max_batch`` x ``max_context`` tokens). Returns
    ``(runner, tokenizer)`` (tokenizer None when ``model`` is a model object).
    """
    from labkit.serving.runner import PagedRunner

    tokenizer = None
    if isinstance(model, str):
        from labkit.model import load_model

        model, tokenizer = load_model(model, dtype=dtype)
    max_context = min(model.config.max_len, max_context or model.config.max_len)
    num_blocks = num_blocks or pool_blocks(max_batch, max_context, block_size)
    return PagedRunner(model, num_blocks=num_blocks, block_size=block_size, max_context=max_context), tokenizer


def serve(runner, requests, policy: str, *, max_batch: int, token_budget: int = 256, clock=None):
    """Serve fresh copies of ``requests`` with ``policy`` ("static" or "continuous"); return (Metrics, Engine)."""
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r}; expected one of {POLICIES}")
    scheduler = StaticScheduler(runner.blocks, max_batch=max_batch) if policy == "static" else None
    engine = Engine(runner, max_batch=max_batch, token_budget=token_budget, scheduler=scheduler,
                    clock=clock or default_clock())
    done = engine.run([r.copy(on_token=None) for r in requests])
    return summarize(done, engine.steps, max_batch=max_batch, unit=engine.clock.unit), engine


def compare(runner, requests, *, max_batch: int, token_budget: int = 256, after=None) -> dict[str, Metrics]:
    """``{policy: Metrics}`` for both policies on the same workload (each on a fresh clock);
    ``after(policy, metrics)`` is called as each finishes."""
    out = {}
    for policy in POLICIES:
        out[policy] = serve(runner, requests, policy, max_batch=max_batch, token_budget=token_budget)[0]
        if after is not None:
            after(policy, out[policy])
    return out


def to_record(policy: str, metrics: Metrics, *, rate, max_batch: int, token_budget: int, kv_bytes: int,
              dtype: str, workload: str = "") -> Record:
    """One policy at one arrival rate as a Record (time_ms: the whole run, on the wall clock only)."""
    wall = metrics.unit == "s"
    return Record(kernel=policy, shape={"rate": rate, "max_batch": max_batch, "requests": metrics.requests,
                                        "token_budget": token_budget},
                  dtype=dtype, bytes=kv_bytes, time_ms=metrics.duration * 1e3 if wall else None,
                  extra={**metrics.as_dict(), "workload": workload})


# The arrival-rate sweep: fractions of the continuous capacity measured offline, from nearly idle to
# well past static batching's saturation (static sustained about a quarter of continuous's
# throughput on the H200), highest first so that a run short of time skips the least telling.
SWEEP_FRACTIONS = (0.8, 0.5, 0.3, 0.22, 0.15, 0.08, 0.03)
# Requests per rate: arrivals over SWEEP_WINDOW clock units (seconds on a GPU), at least
# SWEEP_MIN_REQUESTS. Past saturation the queue grows through the window, so TTFT keeps growing
# with the window's length; below it every request is served as it comes.
SWEEP_WINDOW, SWEEP_MIN_REQUESTS = 4.0, 10


def requests_for_rate(rate: float, *, window: float = SWEEP_WINDOW, min_requests: int = SWEEP_MIN_REQUESTS) -> int:
    """How many requests a sweep serves at ``rate``: ``rate × window``, at least ``min_requests``."""
    return max(min_requests, int(round(rate * window)))


def sweep_rates(runner, make_workload, rates, *, max_batch: int, token_budget: int = 256,
                progress=None, deadline: float | None = None) -> list[Record]:
    """Both policies at each arrival rate. ``make_workload(rate)`` returns the requests (``rate``
    in requests per clock unit; None: all at once). Returns one Record per (policy, rate).
    deadline: a ``time.monotonic()`` after which no new rate is started (the rates left are skipped)."""
    from labkit.serving.workloads import describe

    dtype = str(runner.cache.dtype).replace("torch.", "") if hasattr(runner, "cache") else "toy"
    records = []
    for rate in rates:
        if deadline is not None and time.monotonic() > deadline:
            if progress:
                progress(None, f"rate {rate}: skipped (out of time)")
            continue
        requests = make_workload(rate)
        for policy in POLICIES:
            m, _ = serve(runner, requests, policy, max_batch=max_batch, token_budget=token_budget)
            records.append(to_record(policy, m, rate=rate, max_batch=max_batch, token_budget=token_budget,
                                     kv_bytes=runner.memory_bytes(), dtype=dtype, workload=describe(requests)))
            if progress:
                progress(records[-1], f"rate {rate}: {policy} done")
    return records


def warm_up(runner, make_workload, *, max_batch: int, token_budget: int) -> None:
    """Compile and initialise everything a timed run will use: every kernel variant
    (:meth:`~labkit.serving.runner.PagedRunner.warmup`), then both policies on a few short requests."""
    if hasattr(runner, "warmup") and not runtime.is_sim():  # the simulators compile nothing
        runner.warmup(runner.max_context)
    short = [r.copy(max_new_tokens=min(r.max_new_tokens, 8)) for r in make_workload(16, None, 99)]
    for policy in POLICIES:
        serve(runner, short, policy, max_batch=max_batch, token_budget=token_budget)


def measure(runner, make_workload, *, max_batch: int, token_budget: int = 256, offline_requests: int = 512,
            rate_fractions=SWEEP_FRACTIONS, per_rate: int | None = None, window: float = SWEEP_WINDOW,
            min_requests: int = SWEEP_MIN_REQUESTS, warm: bool = True, progress=None,
            on_offline=None, deadline: float | None = None):
    """The whole comparison: warm-up, both policies on an offline workload (everything at t=0),
    then both at Poisson rates that are ``rate_fractions`` of the continuous capacity just measured,
    each with ``per_rate`` requests, or (``per_rate=None``) :func:`requests_for_rate` of them.

    make_workload(n, rate, seed) returns ``n`` requests. warm: run :func:`warm_up` first (a
    caller that warms up itself passes False). progress(record or None, message) is told of
    each run; on_offline(policy, metrics) as each offline run finishes. deadline
    (``time.monotonic()``): rates not started by then are skipped. With ``progress``, a failed
    rate sweep is reported to it and the offline results are still returned.
    Returns ``(records, offline)``: one Record per (policy, rate) (rate None: offline) and
    ``{policy: Metrics}`` of the offline run.
    """
    from labkit.serving.workloads import describe

    if warm:
        warm_up(runner, make_workload, max_batch=max_batch, token_budget=token_budget)
    requests = make_workload(offline_requests, None, 0)

    def after(policy, m):
        if progress:
            progress(None, f"offline: {policy} done ({m.duration:.3g} {m.unit})")
        if on_offline:
            on_offline(policy, m)

    offline = compare(runner, requests, max_batch=max_batch, token_budget=token_budget, after=after)
    dtype = str(runner.cache.dtype).replace("torch.", "") if hasattr(runner, "cache") else "toy"
    records = [to_record(p, m, rate=None, max_batch=max_batch, token_budget=token_budget,
                         kv_bytes=runner.memory_bytes(), dtype=dtype, workload=describe(requests))
               for p, m in offline.items()]
    c = offline["continuous"]
    capacity = c.throughput / (c.output_tokens / c.requests)  # requests per clock unit it sustains
    rates = [float(f"{f * capacity:.3g}") for f in rate_fractions]
    try:
        def at_rate(rate):
            n = per_rate or requests_for_rate(rate, window=window, min_requests=min_requests)
            return make_workload(n, rate, 1)

        records += sweep_rates(runner, at_rate, rates, max_batch=max_batch,
                               token_budget=token_budget, progress=progress, deadline=deadline)
    except Exception as exc:  # noqa: BLE001 - reported; the offline comparison stands on its own
        if progress is None:
            raise
        progress(None, f"rate sweep failed: {type(exc).__name__}: {exc}")
    return records, offline


def bench_serving(model: str = "target", *, max_batch: int = 32, token_budget: int = 512, offline_requests: int = 128,
                  rate_fractions=SWEEP_FRACTIONS, window: float = 2.0) -> tuple[list[Record], str]:
    """Static vs continuous batching on a shipped model, measured now on a GPU (a smaller run than
    the recorded one), or in sim mode the recorded GPU results. Returns (records, source)."""
    if runtime.is_sim():
        records, meta = recorded_sweep()
        if meta is None:
            return [], "sim mode, and no recorded GPU results match " + RESULTS_PATTERN
        from labkit.bench.records import label

        return records, "recorded on " + label(meta)
    from labkit.serving.workloads import SERVING_MIX, make_requests

    runner, tokenizer = load_runner(model, max_batch=max_batch)

    def workload(n, rate, seed):
        return make_requests(n, seed=seed, rate=rate, mix=SERVING_MIX, tokenizer=tokenizer,
                             max_context=runner.max_context)

    records, _ = measure(runner, workload, max_batch=max_batch, token_budget=token_budget,
                         offline_requests=offline_requests, rate_fractions=rate_fractions, window=window)
    return records, "this run"


def recorded_sweep() -> tuple[list[Record], dict | None]:
    """The newest recorded GPU results (``data/results/serving_*.json``): (records, meta)."""
    from labkit.viz.plots import recorded

    return recorded(RESULTS_PATTERN)


def offline_results(records: list[Record]) -> dict[str, Metrics]:
    """``{policy: Metrics}`` of the offline (all requests at t=0) records."""
    fields = Metrics.__dataclass_fields__
    return {r.kernel: Metrics(**{k: v for k, v in r.extra.items() if k in fields})
            for r in records if r.shape.get("rate") is None}


def format_comparison(results: dict[str, Metrics]) -> str:
    """A table of the policies' metrics, with continuous's ratio over static."""
    unit = next(iter(results.values())).unit
    rate_u, t_u, scale = ("tok/s", "ms", 1e3) if unit == "s" else ("tok/step", "steps", 1.0)
    rows = [("throughput", f"{rate_u}", lambda m: m.throughput, 1.0),
            ("TTFT p50", t_u, lambda m: m.ttft_p50, scale), ("TTFT p99", t_u, lambda m: m.ttft_p99, scale),
            ("TPOT p50", t_u, lambda m: m.tpot_p50, scale), ("TPOT p99", t_u, lambda m: m.tpot_p99, scale),
            ("occupancy", "%", lambda m: m.occupancy, 100.0), ("steps", "", lambda m: m.steps, 1.0),
            ("preemptions", "", lambda m: m.preemptions, 1.0),
            ("recomputed", "tokens", lambda m: m.recomputed_tokens, 1.0)]
    if unit == "s":  # wall time per step (on the logical clock it is 1, plus any idle time)
        rows.insert(7, ("per step", t_u, lambda m: m.duration / m.steps, scale))
    names = list(results)
    head = f"{'metric':<14}{'unit':<10}" + "".join(f"{n:>13}" for n in names) + f"{'ratio':>9}"
    lines = [head, "-" * len(head)]
    for name, u, get, k in rows:
        vals = [get(results[n]) * k for n in names]
        ratio = vals[-1] / vals[0] if len(vals) == 2 and vals[0] and not math.isnan(vals[0]) else float("nan")
        lines.append(f"{name:<14}{u:<10}" + "".join(f"{v:13.1f}" for v in vals) + f"{ratio:8.2f}x")
    return "\n".join(lines)
