"""Benchmarking the paged KV cache: the paged decode kernel against the contiguous one, and
the memory each cache leaves reserved but empty.

:func:`bench_paged` puts the same keys and values in a contiguous cache and in paged pools
of several block sizes (blocks shuffled, as a long-running server's pool ends up), checks
every kernel against a float64 reference, then times them. :func:`waste_records` turns
:func:`labkit.kvcache.waste.memory_waste` on a workload into records. Record files:
``paged_kernel_<gpu>.json`` and ``paged_waste_<device>.json`` under ``data/results/``.
"""

from __future__ import annotations

import math

import torch

from labkit import runtime
from labkit.attention import decode_bytes, get_impl
from labkit.bench.records import Record
from labkit.bench.timing import gbps, rotating, rotation_count, time_for_record
from labkit.checks.core import TOLERANCE, rel_error
from labkit.kvcache.pool import to_paged  # noqa: F401  (the benchmark's pools; re-exported)

CONTIGUOUS = "triton_splitk"  # flash_decode: the contiguous kernel the paged one is measured against
BLOCK_SIZES = (8, 16, 32, 64)
COLD_TABLES_BLOCK_SIZE = 16  # the block size also timed with a block table per input set


def reference_on_device(q, k, v, lengths=None) -> torch.Tensor:
    """Float64 decode attention computed where the tensors are, a sequence at a time (GPU-sized inputs).

    q: [B, Hq, D]; k, v: [B, Hkv, T, D]; lengths: optional [B] valid lengths; returns float64 [B, Hq, D].
    """
    B, Hq, D = q.shape
    group = Hq // k.shape[1]
    lens = [k.shape[2]] * B if lengths is None else [int(n) for n in lengths.tolist()]
    out = torch.empty(B, Hq, D, dtype=torch.float64, device=q.device)
    for b in range(B):
        kb = k[b, :, : lens[b]].double().repeat_interleave(group, dim=0)  # [Hq, T, D]
        vb = v[b, :, : lens[b]].double().repeat_interleave(group, dim=0)
        p = torch.softmax(torch.einsum("hd,htd->ht", q[b].double(), kb) / math.sqrt(D), dim=-1)
        out[b] = torch.einsum("ht,htd->hd", p, vb)
    return out


def contiguous_sets(B: int, Hq: int, Hkv: int, T: int, D: int, dtype: torch.dtype) -> list[tuple]:
    """Random ``(q [B, Hq, D], k, v [B, Hkv, T, D], lengths [B] int32 = T)`` input sets, enough to
    rotate past the L2 with one paged copy of them alive beside (see :func:`paged_sets`)."""
    nbytes = decode_bytes(B, Hq, Hkv, T, D, torch.empty((), dtype=dtype).element_size())
    device = runtime.device()
    sets = []
    for _ in range(rotation_count(3 * nbytes)):  # contiguous K/V plus one pool at a time
        q = torch.randn(B, Hq, D, device=device).to(dtype)
        k = torch.randn(B, Hkv, T, D, device=device).to(dtype)
        v = torch.randn(B, Hkv, T, D, device=device).to(dtype)
        sets.append((q, k, v, torch.full((B,), T, dtype=torch.int32, device=device)))
    return sets


def paged_sets(sets, bs: int, *, per_set_tables: bool) -> list[tuple]:
    """The contiguous input sets copied into shuffled pools of block size ``bs``: one table for
    all sets, or (``per_set_tables``) a fresh one each."""
    out, table = [], None
    for q, k, v, n in sets:
        k_pool, table = to_paged(k, bs, tables=None if per_set_tables else table)
        v_pool, _ = to_paged(v, bs, tables=table)
        out.append((q, k_pool, v_pool, table, n))
    return out


def _contiguous_impl():
    """flash_decode if its module is there, else None (then the paged kernel is compared with SDPA only)."""
    try:
        return get_impl(CONTIGUOUS)
    except (ImportError, AttributeError):
        return None


def bench_paged(block_sizes=BLOCK_SIZES, *, B: int, Hq: int, Hkv: int, T: int, D: int,
                dtype: torch.dtype = torch.float16, roofline_gbps: float | None = None, sdpa: bool = True,
                warmup: int = 25, rep: int = 100) -> list[Record]:
    """Check, then time, the contiguous kernel, SDPA and the paged kernel at each block size on one shape.

    Kernels: ``"contiguous"`` (flash_decode on [B, Hkv, T, D]), ``"sdpa"``, and
    ``"paged bs=N"`` (:func:`~labkit.kvcache.paged_attention.paged_decode` over a shuffled pool).
    Each is compared with a float64 reference first (``extra["rel_error"]``; above tolerance
    raises ``AssertionError``), then timed over enough input sets to exceed 4x the L2. Paged
    records carry ``extra["vs_contiguous"]``: contiguous time / paged time (1.0 = as fast). The
    rotating pools share one block table, as a step's layers do; at block size 16 the record
    also holds the time with a table per set (``extra["vs_contiguous_table_per_set"]``).
    All records share one ``shape`` (block size is in the kernel name), so viz's speedups line up.
    In sim mode only the checks run and times are ``None``.
    """
    from labkit.kvcache.paged_attention import paged_decode

    nbytes = decode_bytes(B, Hq, Hkv, T, D, torch.empty((), dtype=dtype).element_size())
    sets = contiguous_sets(B, Hq, Hkv, T, D, dtype)
    expected = reference_on_device(*sets[0][:3])
    shape = {"B": B, "Hq": Hq, "Hkv": Hkv, "T": T, "D": D}
    dname = str(dtype).replace("torch.", "")

    def measure(kernel: str, fn, inputs, extra: dict) -> Record:
        err = rel_error(fn(*inputs[0]), expected)
        if not err <= TOLERANCE[dtype]:
            raise AssertionError(f"{kernel} at {shape} {dname}: relative error {err:.3g} > {TOLERANCE[dtype]}")
        ms, timing = time_for_record(rotating(fn, inputs), warmup=warmup, rep=rep)
        bw = gbps(nbytes, ms)
        pct = None if bw is None or not roofline_gbps else 100.0 * bw / roofline_gbps
        return Record(kernel, dict(shape), dname, nbytes, ms, bw, pct, {"rel_error": err, **timing, **extra})

    def paged_fn(q, kp, vp, t, n):
        return paged_decode(q, kp, vp, t, n, check_values=False)

    records = []
    flash = _contiguous_impl()
    if flash is not None:
        # with lengths, as an engine calls it: the same kernel path as the paged one but the addresses
        records.append(measure("contiguous", lambda q, k, v, n: flash(q, k, v, lengths=n), sets, {"impl": CONTIGUOUS}))
    if sdpa:
        sdpa_fn = get_impl("sdpa")
        records.append(measure("sdpa", lambda q, k, v, n: sdpa_fn(q, k, v), sets, {}))
    base = records[0].time_ms if records and records[0].kernel == "contiguous" else None
    for bs in block_sizes:
        # One block table for every input set, as the layers of a decode step share their
        # sequences' tables: the rotation moves K and V past the L2, not the 4-byte-per-block table.
        rec = measure(f"paged bs={bs}", paged_fn, paged_sets(sets, bs, per_set_tables=False), {"block_size": bs})
        rec.extra["vs_contiguous"] = base / rec.time_ms if base and rec.time_ms else None
        rec.extra["tables"] = "one per step"
        if bs == COLD_TABLES_BLOCK_SIZE:  # the worst case beside it: each set its own table, cold in the L2
            cold = measure(f"paged bs={bs}", paged_fn, paged_sets(sets, bs, per_set_tables=True), {})
            rec.extra["time_ms_table_per_set"] = cold.time_ms
            rec.extra["vs_contiguous_table_per_set"] = base / cold.time_ms if base and cold.time_ms else None
        records.append(rec)
    del sets
    return records


def waste_records(requests, block_sizes=BLOCK_SIZES, *, max_len: int | None = None, seed: int | None = None) -> list[Record]:
    """Memory waste of max-length preallocation and of paged caches over ``requests``, as records.

    Kernel ``"contiguous"`` and ``"paged bs=N"``; ``extra["waste"]`` is the fraction of reserved
    KV slots holding no token (over every decode step of every request; see
    :mod:`labkit.kvcache.waste`). No times: this is counted, not measured.
    """
    from labkit.kvcache.waste import memory_waste

    reports = [memory_waste(requests, block_size=bs, max_len=max_len) for bs in block_sizes]
    first = reports[0]
    shape = {"requests": len(requests), "max_len": first.max_len}
    common = {"used_token_steps": first.used, "seed": seed}
    out = [Record("contiguous", dict(shape), "tokens", 0,
                  extra={"waste": first.contiguous, "reserved_token_steps": first.contiguous_reserved, **common})]
    for bs, r in zip(block_sizes, reports):
        out.append(Record(f"paged bs={bs}", dict(shape), "tokens", 0,
                          extra={"waste": r.paged, "block_size": bs, "reserved_token_steps": r.paged_reserved,
                                 **common}))
    return out


def ratio_table(records: list[Record]) -> str:
    """Text table: per shape, each paged block size's speed relative to the contiguous kernel."""
    rows = {}
    for r in records:
        key = (r.shape["B"], r.shape["Hq"], r.shape["Hkv"], r.shape["T"], r.shape["D"], r.dtype)
        rows.setdefault(key, {})[r.kernel] = r
    sizes = sorted({r.extra["block_size"] for r in records if "block_size" in r.extra})
    head = f"{'B':>3}{'Hq/Hkv':>8}{'T':>7}{'D':>5} {'dtype':<9}{'contig µs':>10}{'sdpa µs':>9}" + "".join(
        f"{'bs=' + str(s):>9}" for s in sizes)
    lines = [head, "-" * len(head)]
    for (B, Hq, Hkv, T, D, dt), row in rows.items():
        def us(name):
            r = row.get(name)
            return f"{r.time_ms * 1e3:.1f}" if r and r.time_ms else "—"
        ratios = "".join(f"{row[f'paged bs={s}'].extra['vs_contiguous']:8.2f}×"
                         if f"paged bs={s}" in row and row[f"paged bs={s}"].extra.get("vs_contiguous") else f"{'—':>9}"
                         for s in sizes)
        lines.append(f"{B:>3}{f'{Hq}/{Hkv}':>8}{T:>7}{D:>5} {dt:<9}{us('contiguous'):>10}{us('sdpa'):>9}{ratios}")
    return "\n".join(lines)


WASTE_WORKLOAD = {"num_requests": 256, "seed": 0}  # the workload the recorded waste figures use


def record_waste(directory=None, *, block_sizes=BLOCK_SIZES, **workload) -> tuple[list[Record], "object"]:
    """Compute the waste records on the default workload (:data:`WASTE_WORKLOAD`, overridable) and
    save them as ``paged_waste_<device>.json``; return ``(records, path)``. CPU arithmetic only."""
    from labkit.bench.records import run_meta, save_records
    from labkit.kvcache.workload import generate_workload

    spec = {**WASTE_WORKLOAD, **workload}
    records = waste_records(generate_workload(**spec), block_sizes, seed=spec["seed"])
    return records, save_records(records, "paged_waste", run_meta(None), directory)
