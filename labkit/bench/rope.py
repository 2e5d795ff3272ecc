"""Benchmarking RoPE fusion: attention with and without the rotation inside, and the whole
decode step (rotate, cache write, attend) unfused vs fused.

:func:`bench_rope` checks every variant against the float64 reference, then times it
(CUDA events, inputs rotated past the L2) and returns Records with time, effective GB/s,
% of the copy roofline and kernel launches. In sim mode it checks correctness only.
:func:`fusion_summary` turns the Records into the two ratios the course targets.
"""

from __future__ import annotations

import torch

from labkit import runtime
from labkit.attention.reference import decode_bytes, reference_decode
from labkit.bench.records import Record
from labkit.bench.timing import gbps, rotating, rotation_count, time_for_record
from labkit.checks.core import TOLERANCE, rel_error
from labkit.rope import apply_rope, rope_tables
from labkit.rope.fusion import (decode_step_costs, fused_decode_step, reference_decode_step, summarize_costs,
                                unfused_decode_step)

KERNELS = ("sdpa", "flash", "flash+rope", "unfused step", "fused step")
GPU_CONTEXTS = (512, 1024, 2048, 4096)
LLAMA = dict(Hq=32, Hkv=32, D=128)  # Llama-2-7B's attention shape


def _make_set(B, Hq, Hkv, T, D, dtype, device):
    """One input set: the new token of every sequence sits at position T - 1 (the cache's last slot)."""
    positions = torch.full((B,), T - 1, dtype=torch.int32, device=device)
    return dict(q=torch.randn(B, Hq, D, dtype=dtype, device=device),
                k_new=torch.randn(B, Hkv, D, dtype=dtype, device=device),
                v_new=torch.randn(B, Hkv, D, dtype=dtype, device=device),
                k_cache=torch.randn(B, Hkv, T, D, dtype=dtype, device=device),
                v_cache=torch.randn(B, Hkv, T, D, dtype=dtype, device=device),
                positions=positions, lengths=positions + 1, rows=torch.arange(B, device=device))


def count_launches(fn) -> int | None:
    """Kernels (and memory operations) ``fn()`` launches on the GPU, from the profiler; ``None`` in sim mode."""
    if runtime.is_sim():
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        count = sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)
    except Exception:  # noqa: BLE001 - no CUPTI: fall back to the cost model's count
        return None
    return count or None  # the profiler saw no device activity at all: don't report zero


def bench_rope(*, batches=None, contexts=None, Hq: int | None = None, Hkv: int | None = None, D: int | None = None,
               dtype: torch.dtype = torch.float16, roofline_gbps: float | None = None, max_len: int | None = None,
               warmup: int = 25, rep: int = 100) -> list[Record]:
    """Check, then time, the RoPE variants at each (batch, context) for one head shape.

    Kernels: ``sdpa`` and ``flash`` (``flash_decode`` on an already rotated q),
    ``flash+rope`` (``flash_decode`` rotating q inside the kernel), ``unfused step`` and ``fused step``
    (:mod:`labkit.rope.fusion`: rotate q and k, write k and v, attend). Defaults: batches 1
    and 8, contexts 512 … 4096, the Llama shape (32 heads, D = 128) on a GPU; the sim sizes of
    :data:`labkit.runtime.SIZES` in sim mode. Bytes are what each must move: decode attention's
    q, K, V and output, plus (rope) the cos/sin rows, plus (steps) reading and writing the new
    token's k and v; both steps count the same bytes, so their GB/s compare like their times.
    ``extra`` holds ``rel_error``, ``launches`` (profiler on a GPU, cost model in sim mode) and,
    for steps, ``as_run_bytes`` (what the unfused ops really move, intermediates included).
    A relative error above tolerance raises ``AssertionError``.
    """
    sim = runtime.is_sim()
    sizes = runtime.SIZES
    batches = tuple(batches or sizes.batches)
    contexts = tuple(contexts or (sizes.contexts if sim else GPU_CONTEXTS))
    Hq = Hq or (sizes.heads if sim else LLAMA["Hq"])
    Hkv = Hkv or (Hq if sim else LLAMA["Hkv"])
    D = D or (sizes.head_dim if sim else LLAMA["D"])
    max_len = max_len or max(contexts)
    device = runtime.device()
    cos, sin = rope_tables(max_len, D, device=device)
    from labkit.attention.sdpa import sdpa_decode
    from labkit.attention.triton_decode import flash_decode

    fns = {
        "sdpa": lambda s: sdpa_decode(s["q_rot"], s["k_cache"], s["v_cache"]),
        "flash": lambda s: flash_decode(s["q_rot"], s["k_cache"], s["v_cache"], lengths=s["lengths"]),
        "flash+rope": lambda s: flash_decode(s["q"], s["k_cache"], s["v_cache"], lengths=s["lengths"],
                                             rope=(cos, sin, s["positions"])),
        "unfused step": lambda s: unfused_decode_step(s["q"], s["k_new"], s["v_new"], s["k_cache"], s["v_cache"],
                                                      s["positions"], cos, sin, rows=s["rows"], lengths=s["lengths"]),
        "fused step": lambda s: fused_decode_step(s["q"], s["k_new"], s["v_new"], s["k_cache"], s["v_cache"],
                                                  s["positions"], cos, sin, rows=s["rows"], lengths=s["lengths"]),
    }
    itemsize = torch.empty((), dtype=dtype).element_size()
    records = []
    for B in batches:
        for T in contexts:
            costs = summarize_costs(decode_step_costs(B, Hq, Hkv, T, D, dtype, max_len))
            attn_bytes = decode_bytes(B, Hq, Hkv, T, D, itemsize)
            rope_bytes = 2 * B * (D // 2) * 4 + B * 4
            step_bytes = costs["fused"]["bytes"]
            cache_bytes = 2 * B * Hkv * T * D * itemsize
            sets = [_make_set(B, Hq, Hkv, T, D, dtype, device) for _ in range(rotation_count(cache_bytes))]
            for s in sets:
                s["q_rot"] = apply_rope(s["q"], s["positions"][:, None], cos, sin)
            expected_attn = reference_decode(apply_rope(sets[0]["q"].double(), sets[0]["positions"][:, None],
                                                        cos.double(), sin.double()),
                                             sets[0]["k_cache"], sets[0]["v_cache"])
            shape = {"B": B, "Hq": Hq, "Hkv": Hkv, "T": T, "D": D}
            model_launches = {"flash": 1, "flash+rope": 1, "sdpa": 1,
                              "unfused step": costs["unfused"]["launches"], "fused step": costs["fused"]["launches"]}
            for name in KERNELS:
                fn = fns[name]
                s0 = sets[0]
                if name.endswith("step"):
                    expected, k_want, v_want = reference_decode_step(s0["q"], s0["k_new"], s0["v_new"], s0["k_cache"],
                                                                     s0["v_cache"], s0["positions"], cos, sin)
                    k_saved, v_saved = s0["k_cache"].clone(), s0["v_cache"].clone()
                    out = fn(s0)
                    slot = (s0["rows"].cpu(), slice(None), s0["positions"].cpu().long())  # the written slots
                    err = max(rel_error(out, expected), rel_error(s0["k_cache"].cpu()[slot], k_want[slot]),
                              rel_error(s0["v_cache"].cpu()[slot], v_want[slot]))
                    s0["k_cache"].copy_(k_saved), s0["v_cache"].copy_(v_saved)
                    nbytes, extra = step_bytes, {"as_run_bytes": costs[name.split()[0]]["bytes"]}
                else:
                    err = rel_error(fn(s0), expected_attn)
                    nbytes, extra = attn_bytes + (rope_bytes if name.endswith("rope") else 0), {}
                if not err <= TOLERANCE[dtype]:
                    raise AssertionError(f"{name} at {shape} {dtype}: relative error {err:.3g} > {TOLERANCE[dtype]}")
                ms, timing = time_for_record(rotating(fn, [(s,) for s in sets]), warmup=warmup, rep=rep)
                extra.update(timing)
                launches = count_launches(lambda: fn(s0))
                extra.update(rel_error=err, launches=launches if launches is not None else model_launches[name],
                             launches_from="profiler" if launches is not None else "cost model")
                bw = gbps(nbytes, ms)
                pct = None if bw is None or not roofline_gbps else 100.0 * bw / roofline_gbps
                records.append(Record(name, dict(shape), str(dtype).replace("torch.", ""), nbytes, ms, bw, pct, extra))
            del sets
    return records


def fusion_summary(records: list[Record]) -> list[dict]:
    """Per (B, T): ``rope_overhead`` = time(flash+rope) / time(flash) and
    ``step_speedup`` = time(unfused step) / time(fused step); ``None`` where untimed."""
    by = {}
    for r in records:
        by.setdefault((r.shape["B"], r.shape["T"]), {})[r.kernel] = r.time_ms
    rows = []
    for (B, T), t in sorted(by.items()):
        ratio = lambda a, b: t[a] / t[b] if t.get(a) and t.get(b) else None  # noqa: E731
        rows.append({"B": B, "T": T, "rope_overhead": ratio("flash+rope", "flash"),
                     "step_speedup": ratio("unfused step", "fused step")})
    return rows


def format_fusion_summary(records: list[Record], *, max_overhead: float = 1.05, min_speedup: float = 1.3,
                          speedup_up_to: int = 2048) -> str:
    """The targets as a table: RoPE inside attention costs ≤ ``max_overhead``× attention alone;
    the fused step is ≥ ``min_speedup``× faster than the unfused one for T ≤ ``speedup_up_to``."""
    lines = [f"{'B':>3}{'T':>7}{'rope+attn / attn':>18}{'target':>9}{'fused step speedup':>20}{'target':>9}"]
    for row in fusion_summary(records):
        o, s = row["rope_overhead"], row["step_speedup"]
        o_txt = f"{o:.3f}×" if o else "—"
        s_txt = f"{s:.2f}×" if s else "—"
        o_ok = "—" if o is None else ("met" if o <= max_overhead else "MISSED")
        s_ok = ("—" if s is None else ("met" if s >= min_speedup else "MISSED")) if row["T"] <= speedup_up_to else "n/a"
        lines.append(f"{row['B']:>3}{row['T']:>7}{o_txt:>18}{o_ok:>9}{s_txt:>20}{s_ok:>9}")
    return "\n".join(lines)


def rope_results(records: list[Record], roofline_gbps: float | None = None) -> tuple[list[Record], str, float | None]:
    """``(records, source, roofline)``: this run's if timed (a GPU), else the newest recorded
    ``rope_*.json`` in ``data/results`` with its GPU, date and roofline (``([], why, None)`` if none)."""
    from labkit.bench.records import label
    from labkit.viz.plots import recorded

    if any(r.time_ms is not None for r in records):
        return records, "this run", roofline_gbps
    rec, meta = recorded("rope_*.json")
    if meta is None:
        return [], "no timings: sim mode, and no recorded GPU results (rope_*.json) in data/results", None
    return rec, "recorded on " + label(meta), meta.get("roofline_gbps")


__all__ = ["KERNELS", "bench_rope", "count_launches", "format_fusion_summary", "fusion_summary", "rope_results"]
