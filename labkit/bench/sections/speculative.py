"""Section ``speculative`` (notebook 06): speculative decoding's speedup on the course's models.

fp16, batch 1, held-out prompts, CUDA graphs. Full run (as recorded): one forward pass against
its new tokens (the model path, the fused engine in each linear mode, the Triton engine), the
reference loop at γ 2, 4, 6, the fused path plain vs speculative at γ 2 … 6 (greedy, with the
fastest linear mode per pass size) and at γ = 4 sampling, and the same greedy sweep on the
Triton decode engine. ``quick``: 4 prompts × 128 tokens, γ = 4, both engines. Sim mode: two
prompts, a few tokens, the PyTorch engine: greedy speculative must give the target's own tokens.
"""

from __future__ import annotations

from tqdm.auto import tqdm

from labkit import runtime
from labkit.bench.records import Record
from labkit.bench.sections import SectionFailed, headline

TITLE = "speculative decoding"
NOTEBOOKS = "06"
RESULTS = "speculative"
GAMMAS = (2, 3, 4, 5, 6)


def tune_linear(records: list[Record]) -> dict:
    """{S: fastest linear mode} from the fused engine's pass records of one model ({} without timings)."""
    best = {}
    for r in records:
        if r.time_ms is not None:
            S = r.shape["S"]
            if S not in best or r.time_ms < best[S][0]:
                best[S] = (r.time_ms, r.extra["linear"])
    return {S: mode for S, (_, mode) in sorted(best.items())}


def _pass_costs(target, draft, progress) -> tuple[list[Record], dict]:
    from labkit.decoding.bench import bench_engine_pass_cost, bench_pass_cost
    from labkit.decoding.engine import LINEAR_MODES

    records = []
    for model, name in tqdm(((target, "target pass"), (draft, "draft pass")), desc="pass costs",
                            disable=not progress, leave=False):
        records += bench_pass_cost(model, name)
        for mode in LINEAR_MODES:
            records += bench_engine_pass_cost(model, f"{name}, fused {mode}", linear=mode)
        records += bench_engine_pass_cost(model, f"{name}, triton", engine="triton")
    tuned = {name: tune_linear([r for r in records if r.kernel.startswith(f"{name} pass, fused")]) or "mm"
             for name in ("target", "draft")}
    return records, tuned


def run(quick: bool = False, *, roofline_gbps: float | None = None, progress: bool = True) -> list[Record]:
    """Measure (GPU) or check (sim) speculative decoding on ``data/models``' target and draft."""
    from labkit.decoding.bench import bench_fast, bench_speculative
    from labkit.model import heldout_prompts, load_model

    gpu = not runtime.is_sim()
    target, tok = load_model("target")
    draft, _ = load_model("draft")
    n_prompts, n_tokens = (4, 128) if gpu and quick else (8 if gpu else 2, runtime.SIZES.model_tokens)
    prompts = [tok.encode(t) for t in heldout_prompts(n_prompts, 64, seed=2024)]
    kw = dict(max_new_tokens=n_tokens, roofline_gbps=roofline_gbps)
    records, lin = [], {"target": "mm", "draft": "mm"}
    if gpu and not quick:
        costs, lin = _pass_costs(target, draft, progress)
        records += costs
    gammas = GAMMAS if gpu and not quick else (4,)
    steps = [("fused greedy", lambda: bench_fast(target, draft, prompts, gammas=gammas, linear=lin["target"],
                                                 draft_linear=lin["draft"], **kw))]
    if gpu:  # the Triton engine's layer kernels are too slow for the interpreter at these model sizes
        steps.append(("Triton engine greedy", lambda: bench_fast(target, draft, prompts, gammas=gammas,
                                                                 engine="triton", **kw)))
    if gpu and not quick:
        steps += [("reference loop", lambda: bench_speculative(target, draft, prompts, gammas=(2, 4, 6), graphs=True,
                                                               **kw)),
                  ("fused sampling", lambda: bench_fast(target, draft, prompts, gammas=(4,), temperature=1.0,
                                                        linear=lin["target"], draft_linear=lin["draft"], **kw))]
    for _, step in tqdm(steps, desc="speculative", disable=not progress, leave=False):
        records += step()
    if not gpu:  # fp32 on the CPU: greedy speculative must be the target's own tokens
        wrong = [f"{r.extra.get('impl')} γ={r.shape['gamma']}: greedy speculative tokens differ from the target's"
                 for r in records if r.extra.get("same_tokens_as_target") is False]
        if wrong:
            raise SectionFailed(wrong, records)
    return records


def summary(records: list[Record]) -> dict | None:
    greedy = [r for r in records if r.kernel == "speculative" and r.shape.get("gamma") == 4
              and r.shape.get("sampling") == "greedy" and r.extra.get("impl") in ("fused", "fused-triton")]
    if not greedy:
        return None
    parts, best = [], None
    for r in sorted(greedy, key=lambda r: r.extra["impl"]):
        engine = "Triton engine" if r.extra["impl"] == "fused-triton" else "PyTorch engine"
        s = r.extra.get("speedup")
        parts.append(f"{engine} {s:.2f}×" if s else engine + " (untimed)")
        best = max(best or 0, s or 0) or None
    tpp = max(r.extra["tokens_per_pass"] for r in greedy)
    return headline(f"γ = 4: {tpp:.2f} tokens per target pass; wall clock " + ", ".join(parts), best,
                    "× plain decoding", "speculative vs plain decoding")


def show(records: list[Record], source: str) -> None:
    from labkit.decoding.plots import format_speculative_table

    print(f"speculative decoding ({source}):")
    print(format_speculative_table([r for r in records if r.kernel in ("target", "speculative")]))


__all__ = ["GAMMAS", "NOTEBOOKS", "RESULTS", "TITLE", "run", "show", "summary", "tune_linear"]
