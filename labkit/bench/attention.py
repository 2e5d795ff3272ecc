"""Benchmarking decode attention: correctness first, then time, effective GB/s and % of roofline.

:func:`bench_decode` is the one measurement every attention notebook and ``labkit bench`` use.
"""

from __future__ import annotations

import torch

from labkit import runtime
from labkit.attention import decode_bytes, get_impl, reference_decode
from labkit.bench.records import Record
from labkit.bench.timing import gbps, rotating, rotation_count, time_for_record
from labkit.checks.core import TOLERANCE, rel_error


def make_decode_inputs(B: int, Hq: int, Hkv: int, T: int, D: int, dtype: torch.dtype, *, device=None,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q [B, Hq, D] and k, v [B, Hkv, T, D] (standard normal, never zeros) on ``device``."""
    device = device or runtime.device()
    shapes = [(B, Hq, D), (B, Hkv, T, D), (B, Hkv, T, D)]
    return tuple(torch.randn(s, generator=generator, dtype=torch.float32, device="cpu").to(device, dtype)
                 if generator is not None else torch.randn(s, dtype=dtype, device=device) for s in shapes)


def bench_decode(impls, *, B: int, Hq: int, Hkv: int, T: int, D: int, dtype: torch.dtype,
                 roofline_gbps: float | None, check: bool = True, warmup: int = 25, rep: int = 100,
                 impl_kwargs: dict | None = None) -> list[Record]:
    """Check, then time, each implementation in ``impls`` on one decode shape.

    Each implementation is first compared with the float64 reference (the relative error goes
    into ``Record.extra["rel_error"]``; above tolerance raises ``AssertionError``), then timed
    with CUDA events over enough input sets that the KV working set is >= 4x the L2. The
    record's ``time_ms`` is the GPU time with the call captured in a CUDA graph, as a decode
    engine runs it (``extra["timing"] == "graph"``); ``extra["eager_ms"]`` is the time of the
    same call launched from Python, whose difference is host overhead. In sim mode only the
    correctness check runs and ``time_ms`` stays ``None``.
    ``impl_kwargs`` maps an implementation name to extra keyword arguments for it.
    """
    nbytes = decode_bytes(B, Hq, Hkv, T, D, torch.empty((), dtype=dtype).element_size())
    sets = [make_decode_inputs(B, Hq, Hkv, T, D, dtype) for _ in range(rotation_count(nbytes))]
    expected = reference_decode(*sets[0]) if check else None
    shape = {"B": B, "Hq": Hq, "Hkv": Hkv, "T": T, "D": D}
    records = []
    for name in impls:
        fn = get_impl(name)
        kwargs = (impl_kwargs or {}).get(name, {})
        extra = {}
        if check:
            err = rel_error(fn(*sets[0], **kwargs), expected)
            extra["rel_error"] = err
            if not err <= TOLERANCE[dtype]:
                raise AssertionError(f"{name} at {shape} {dtype}: relative error {err:.3g} > {TOLERANCE[dtype]}")
        ms, timing = time_for_record(rotating(lambda q, k, v: fn(q, k, v, **kwargs), sets), warmup=warmup, rep=rep)
        extra.update(timing)
        bw = gbps(nbytes, ms)
        pct = None if bw is None or not roofline_gbps else 100.0 * bw / roofline_gbps
        records.append(Record(name, shape, str(dtype).replace("torch.", ""), nbytes, ms, bw, pct, extra))
    del sets
    return records


# ---------------------------------------------------------------------------------------------
# The attention section of `labkit bench`: every kernel over the course's decode shapes

KERNELS = ("naive", "numba", "triton", "triton_splitk", "sdpa")
SHAPES = {  # name -> (query heads, KV heads, head dim, dtype)
    "gpt2": (12, 12, 64, torch.float32),  # GPT-2 small, the seed's T4 table
    "llama": (32, 32, 128, torch.float16),  # Llama-2-7B
    "llama-gqa": (32, 8, 128, torch.float16),  # Llama-3-8B: 4 query heads per KV head
}
SIM_SHAPES = {  # the same kinds of shape, small enough for the CPU simulators
    "gpt2": (2, 2, 64, torch.float32),
    "llama": (2, 2, 128, torch.float16),
    "llama-gqa": (4, 1, 128, torch.float16),
}
CHECK_LIMIT = 1 << 28  # B·Hq·T·D above which the float64 CPU reference (2 GB a tensor) is skipped
SEED_T4 = {  # the seed's speedups over naive on a T4, GPT-2 shape, batch 1 (ANCHORS.md)
    "numba": {512: 1.7, 2048: 3.4, 4096: 4.1, 8192: 6.5},
    "triton_splitk": {4096: 5.1, 8192: 8.2},
}


def available_kernels(kernels=KERNELS) -> tuple[list[str], list[str]]:
    """The kernels that import here, and a message for each one that doesn't (it is skipped)."""
    have, skipped = [], []
    for name in kernels:
        try:
            get_impl(name)
        except Exception as exc:  # noqa: BLE001 - a missing or broken module skips that kernel only
            skipped.append(f"{name}: skipped ({type(exc).__name__}: {exc})")
        else:
            have.append(name)
    return have, skipped


def _parse_list(text, kind=int):
    return None if text in (None, "", "all") else [kind(x) for x in str(text).split(",") if x.strip()]


def bench_attention(shapes=tuple(SHAPES), *, batches=None, contexts=None, dtype: torch.dtype | None = None,
                    roofline_gbps: float | None = None, kernels=KERNELS, progress: bool = True,
                    warmup: int = 25, rep: int = 100) -> tuple[list[Record], list[str]]:
    """Check and time ``kernels`` over ``shapes`` × ``batches`` × ``contexts``.

    Shapes are names from :data:`SHAPES` (:data:`SIM_SHAPES` in sim mode); batches and
    contexts default to :data:`labkit.runtime.SIZES`; ``dtype`` overrides every shape's.
    Returns ``(records, failures)``: one Record per kernel and shape (``extra`` holds the
    shape name, the relative error, speedups over naive and SDPA, and flash-decoding's split
    count); ``failures`` lists the kernels whose output was wrong or that raised.
    """
    from tqdm.auto import tqdm

    from labkit.attention.triton_decode import default_splits

    table = SIM_SHAPES if runtime.is_sim() else SHAPES
    unknown = [s for s in shapes if s not in table]
    if unknown:
        raise ValueError(f"unknown shape(s) {unknown}; expected some of {list(table)}")
    batches = list(batches or runtime.SIZES.batches)
    contexts = list(contexts or runtime.SIZES.contexts)
    tasks = [(name, B, T) for name in shapes for B in batches for T in contexts]
    records, failures = [], []
    for name, B, T in tqdm(tasks, desc="attention", disable=not progress, leave=False):
        Hq, Hkv, D, shape_dtype = table[name]
        dt = dtype or shape_dtype
        kw = dict(B=B, Hq=Hq, Hkv=Hkv, T=T, D=D, dtype=dt, roofline_gbps=roofline_gbps,
                  check=B * Hq * T * D <= CHECK_LIMIT, warmup=warmup, rep=rep)
        try:
            recs = bench_decode(kernels, **kw)
        except Exception:  # noqa: BLE001 - find which kernel failed, keep the others
            recs = []
            for kernel in kernels:
                try:
                    recs += bench_decode([kernel], **kw)
                except Exception as exc:  # noqa: BLE001
                    failures.append(f"{kernel} at {name} B={B} T={T} {str(dt).replace('torch.', '')}: "
                                    f"{type(exc).__name__}: {exc}")
        for r in recs:
            r.extra["shape"] = name
            if r.kernel == "triton_splitk":
                r.extra["num_splits"] = default_splits(B, Hq, Hkv, T, D, itemsize=dt.itemsize)
        records += recs
    _add_speedups(records)
    return records, failures


def _add_speedups(records: list[Record]) -> None:
    by_shape = {}
    for r in records:
        by_shape.setdefault((tuple(sorted(r.shape.items())), r.dtype), {})[r.kernel] = r
    for row in by_shape.values():
        for r in row.values():
            for base in ("naive", "sdpa"):
                ref = row.get(base)
                if r.time_ms and ref is not None and ref.time_ms:
                    r.extra[f"speedup_vs_{base}"] = ref.time_ms / r.time_ms


def ratio(x: float) -> str:
    """A speedup for a table: one decimal, two significant digits below 0.1 (0.034, not 0.0)."""
    return f"{x:.2g}" if abs(x) < 0.1 else f"{x:.1f}"


SEED_NOTE = ("T4 seed ×: the speedups over naive the course's claims quote for a T4 (GPT-2 shape, batch 1;\n"
             "fused = a Numba fused kernel, flash = Triton flash-decoding), for comparison; — where none exists.")


def seed_table(records: list[Record], *, shape: str = "gpt2", B: int = 1,
               kernels=("numba", "triton_splitk", "sdpa")) -> str:
    """Speedup over naive per context for ``shape`` at batch ``B``, beside the seed's T4 figures."""
    rows = {}
    for r in records:
        if r.extra.get("shape", None) in (shape, None) and r.shape.get("B") == B and r.time_ms:
            rows.setdefault(r.shape["T"], {})[r.kernel] = r
    head = f"{'context':>8}{'naive µs':>10}" + "".join(f"{k + ' ×':>16}" for k in kernels) + \
        f"{'T4 seed fused ×':>17}{'T4 seed flash ×':>17}"
    lines = [head, "-" * len(head)]
    for T in sorted(rows):
        row = rows[T]
        naive = row.get("naive")
        cells = "".join(f"{ratio(naive.time_ms / row[k].time_ms):>15}×" if naive and k in row else f"{'—':>16}"
                        for k in kernels)
        seed = "".join(f"{ratio(SEED_T4[k][T]):>16}×" if T in SEED_T4[k] else f"{'—':>17}" for k in ("numba", "triton_splitk"))
        lines.append(f"{T:>8}{naive.time_ms * 1e3 if naive else float('nan'):>10.1f}{cells}{seed}")
    return "\n".join(lines + [SEED_NOTE])


def correctness_summary(records: list[Record]) -> str:
    """The largest relative error of each kernel against the float64 reference, per dtype."""
    worst = {}
    for r in records:
        if "rel_error" in r.extra:
            key = (r.kernel, r.dtype)
            worst[key] = max(worst.get(key, 0.0), r.extra["rel_error"])
    return "\n".join(f"  {k:<14}{dt:<9} max relative error {e:.2e} (tolerance {TOLERANCE[getattr(torch, dt)]:.0e})"
                     for (k, dt), e in sorted(worst.items()))


def attention_section(out, roofline, args) -> int:
    """``labkit bench``'s attention section: the sweep, a table, JSON and plots (GPU); 1 if a kernel failed."""
    from labkit.bench.records import label, run_meta, save_records
    from labkit.bench.timing import timings_need_gpu_message
    from labkit.viz import format_table, recorded

    shapes = list(SHAPES) if args.shapes in (None, "all") else [s.strip() for s in args.shapes.split(",")]
    dtype = getattr(torch, args.dtype) if args.dtype else None
    kernels, skipped = available_kernels()
    print(f"\n== decode attention: {', '.join(kernels)} over {', '.join(shapes)}")
    for line in skipped:
        print("  " + line)
    records, failures = bench_attention(shapes, batches=_parse_list(args.batches), contexts=_parse_list(args.contexts),
                                        dtype=dtype, roofline_gbps=roofline, kernels=kernels)
    print("correctness (float64 reference):\n" + correctness_summary(records))
    if runtime.is_sim():
        print(timings_need_gpu_message())
        rec, meta = recorded("attention_*.json")
        if meta is None:
            print("no recorded GPU results for attention in data/results yet")
        else:
            print(f"recorded on {label(meta)} (copy roofline {meta.get('roofline_gbps') or 0:.0f} GB/s):")
            print(format_table(rec))
            print("\nspeedup over naive, GPT-2 shape, batch 1 (recorded):\n" + seed_table(rec))
    else:
        print(format_table(records))
        if "gpt2" in shapes:
            print("\nspeedup over naive, GPT-2 shape, batch 1:\n" + seed_table(records))
        meta = run_meta(roofline)
        path = save_records(records, "attention", meta, out)
        print(f"records -> {path}")
        for png in save_plots(records, out, meta):
            print(f"plot -> {png}")
    for line in failures:
        print("FAILED " + line)
    return 1 if failures else 0


def save_plots(records: list[Record], out, meta: dict) -> list:
    """One PNG per shape at batch 1 (time and GB/s against context, roofline drawn); returns the paths."""
    from pathlib import Path

    import matplotlib.pyplot as plt

    from labkit.bench.records import label, slug
    from labkit.viz import plot_bandwidth

    paths = []
    for name in dict.fromkeys(r.extra.get("shape") for r in records):
        rows = [r for r in records if r.extra.get("shape") == name and r.shape.get("B") == 1]
        if not rows:
            continue
        fig = plot_bandwidth(rows, roofline_gbps=meta.get("roofline_gbps"), title=f"decode attention, {name}, batch 1",
                             source=label(meta))
        path = Path(out) / f"attention_{name}_{slug(meta.get('device', 'gpu'))}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
