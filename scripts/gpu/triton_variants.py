"""Two candidate changes to the MHA flash-decoding kernel, measured beside the shipped one.

    PYTHONPATH=. python scripts/gpu/triton_variants.py [--out DIR]

The reduction kernel (:mod:`labkit.attention.triton_decode`, ``use_dot=False``) reduces over
the tile's tokens three times a tile (the max, the sum and p·V): each reduction crosses warps,
so each goes through shared memory behind a barrier, and the next tile's loads wait for it.
The candidates:

* ``rows``: every token row of the tile keeps its own online softmax (m, l and a [D]
  accumulator per row), so the loop has no reduction across tokens at all; the rows are merged
  once, by log-sum-exp, after the loop. Registers: the [BLOCK_T, D] fp32 accumulator.
* ``pdl``: the merge kernel launched as a programmatic dependent launch (Hopper): it is staged
  while the split kernel runs and waits (``griddepcontrol.wait``) for its results, so the launch
  gap between the two kernels goes.

The record in ``data/results/reverted/`` was measured while one head still took the reduction
kernel; ``shipped`` is now whatever :func:`flash_decode` picks (on sm_90 with fp16, the
tensor-core path). Each variant is checked against the float64 reference before it is
timed (CUDA graph, KV rotated past the L2), at fp16, 32 heads, d = 128, beside the shipped
kernel and SDPA's best backend. Writes ``triton_variants_<gpu>.json``. GPU only.
"""

from __future__ import annotations

import argparse
import os
import sys

import labkit  # noqa: F401  (decides the mode before triton is imported)
import torch
import triton
import triton.language as tl

from labkit.attention import reference_decode
from labkit.attention.reference import decode_bytes
from labkit.attention.splits import LOG2E
from labkit.attention.triton_decode import _merge_kernel, flash_decode, plan_splits
from labkit.attention.triton_plan import Config, workspace
from labkit.bench import Record, copy_roofline_gbps, gbps, rotation_count, run_meta, save_records
from labkit.bench.attention import make_decode_inputs
from labkit.checks.core import TOLERANCE, rel_error

sys.path.insert(0, os.path.dirname(__file__))
from triton_attention import sdpa_best, timed  # noqa: E402

D = 128


@triton.jit
def _rows_kernel(
    Q,  # [B·H, D] queries
    K, V,  # [B·H, T, D] the cache
    Mws, Lws,  # [B·H, num_splits] fp32 partial max (log2 domain) and sum
    Accws,  # [B·H, num_splits, D] fp32 partial unnormalised output
    qk_scale,  # softmax scale × log2(e)
    T,  # tokens per sequence
    num_splits,  # programs per (sequence, head) along T
    HEAD_DIM: tl.constexpr,
    BLOCK_T: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    LAUNCH_DEPENDENTS: tl.constexpr,  # let a PDL-launched merge be staged now
):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    if LAUNCH_DEPENDENTS:
        tl.extra.cuda.gdc_launch_dependents()
    tiles_per_split = tl.cdiv(tl.cdiv(T, BLOCK_T), num_splits)
    t_begin = split * tiles_per_split * BLOCK_T
    t_end = tl.minimum(t_begin + tiles_per_split * BLOCK_T, T)
    offs_t = tl.arange(0, BLOCK_T)[:, None]
    offs_d = tl.arange(0, HEAD_DIM)[None, :]
    q = tl.load(Q + bh.to(tl.int64) * HEAD_DIM + offs_d).to(tl.float32) * qk_scale  # [1, D]
    # one online softmax per token row: no reduction across rows inside the loop
    m = tl.full([BLOCK_T, 1], -1e30, dtype=tl.float32)  # finite: an unused row's weight stays 0, never NaN
    l = tl.zeros([BLOCK_T, 1], dtype=tl.float32)
    acc = tl.zeros([BLOCK_T, HEAD_DIM], dtype=tl.float32)
    base = bh.to(tl.int64) * T * HEAD_DIM
    for start in tl.range(t_begin, t_end, BLOCK_T, num_stages=NUM_STAGES):
        t = start + offs_t
        mask = t < t_end
        offs = base + t.to(tl.int64) * HEAD_DIM + offs_d
        k = tl.load(K + offs, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(V + offs, mask=mask, other=0.0).to(tl.float32)
        s = tl.where(mask, tl.sum(q * k, axis=1, keep_dims=True), float("-inf"))  # [BLOCK_T, 1]
        m_new = tl.maximum(m, s)
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new)
        l = l * alpha + p
        acc = acc * alpha + p * v
        m = m_new
    # the rows merged by log-sum-exp, once
    m_all = tl.max(m, axis=0, keep_dims=True)  # [1, 1]
    w = tl.exp2(m - m_all)
    l_all = tl.sum(l * w, axis=0, keep_dims=True)
    acc_all = tl.sum(acc * w, axis=0, keep_dims=True)  # [1, D]
    part = bh.to(tl.int64) * num_splits + split
    tl.store(Mws + part + tl.zeros([1, 1], dtype=tl.int64), m_all)
    tl.store(Lws + part + tl.zeros([1, 1], dtype=tl.int64), l_all)
    tl.store(Accws + part * HEAD_DIM + offs_d, acc_all)


@triton.jit
def _merge_pdl_kernel(Mws, Lws, Accws, Out, num_splits, HEAD_DIM: tl.constexpr, SPLITS_P: tl.constexpr):
    """The shipped merge, waiting first for the kernel it depends on (a PDL launch)."""
    tl.extra.cuda.gdc_wait()
    _merge_kernel(Mws, Lws, Accws, Out, num_splits, HEAD_DIM, SPLITS_P)


def rows_decode(q, k, v, *, block_t: int, num_warps: int, num_stages: int, num_splits: int, pdl: bool):
    B, H, _ = q.shape
    T = k.shape[2]
    out = torch.empty_like(q)
    m, l, acc = workspace(q.device, B, H, num_splits, D)
    _rows_kernel[(B * H, num_splits)](q, k, v, m, l, acc, D ** -0.5 * LOG2E, T, num_splits, HEAD_DIM=D,
                                      BLOCK_T=block_t, NUM_STAGES=num_stages, LAUNCH_DEPENDENTS=pdl,
                                      num_warps=num_warps)
    merge = _merge_pdl_kernel if pdl else _merge_kernel
    merge[(B * H,)](m, l, acc, out, num_splits, HEAD_DIM=D, SPLITS_P=triton.next_power_of_2(num_splits),
                    num_warps=4, **({"launch_pdl": True} if pdl else {}))
    return out


def shipped_pdl(q, k, v):
    """The shipped split kernel, then the merge as a PDL launch (implicit trigger at its end)."""
    from decode_floor import shipped_plan, split_kernel
    cfg, S, ws = shipped_plan(q, k)
    out = torch.empty_like(q)
    split_kernel(q, k, v, out, cfg, S, ws)
    _merge_pdl_kernel[(q.shape[0] * q.shape[1],)](*ws, out, S, HEAD_DIM=D, SPLITS_P=triton.next_power_of_2(S),
                                                  num_warps=4, launch_pdl=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/results/reverted")
    ap.add_argument("--contexts", default="2048,4096,8192,16384,32768")
    args = ap.parse_args()
    roofline = copy_roofline_gbps()
    print(f"copy roofline {roofline:.0f} GB/s")
    records, failures = [], []
    cases = [(1, T) for T in map(int, args.contexts.split(","))] + [(8, 8192)]
    for B, T in cases:
        nbytes = decode_bytes(B, 32, 32, T, D, 2)
        sets = [make_decode_inputs(B, 32, 32, T, D, torch.float16) for _ in range(rotation_count(nbytes))]
        expected = reference_decode(*sets[0])

        def rec(kernel, ms, **extra):
            records.append(Record(kernel=kernel, shape=dict(B=B, Hq=32, Hkv=32, T=T, D=D), dtype="float16",
                                  bytes=nbytes, time_ms=ms, gbps=gbps(nbytes, ms),
                                  pct_roofline=100 * gbps(nbytes, ms) / roofline, extra=extra))
            print(f"B={B} T={T:6d} {kernel:>10s} {ms * 1e3:8.1f} µs {100 * gbps(nbytes, ms) / roofline:5.1f}%  {extra}",
                  flush=True)

        def measure(name, fn, **extra):
            err = rel_error(fn(*sets[0]), expected)
            if not err <= TOLERANCE[torch.float16]:
                failures.append(f"{name} B={B} T={T} {extra}: rel error {err:.2e}")
                return None
            ms = timed(fn, sets, 25, 100)
            rec(name, ms, rel_error=err, **extra)
            return ms

        measure("shipped", lambda q, k, v: flash_decode(q, k, v))
        measure("shipped+pdl", shipped_pdl)
        for block_t, warps in ((32, 4), (64, 4), (64, 8), (128, 8)):
            S0 = plan_splits(B, 32, 32, T, Config(block_t=block_t, num_warps=warps, num_stages=1))
            for stages in (1, 2):
                for S in sorted({max(1, S0 // 2), S0, 2 * S0}):
                    for pdl in ((False, True) if S == S0 else (False,)):
                        measure("rows+pdl" if pdl else "rows",
                                lambda q, k, v, c=(block_t, warps, stages, S, pdl): rows_decode(
                                    q, k, v, block_t=c[0], num_warps=c[1], num_stages=c[2], num_splits=c[3], pdl=c[4]),
                                block_t=block_t, num_warps=warps, num_stages=stages, splits=S)
        ms, backend = sdpa_best(sets, expected, False, 25, 100)
        rec("sdpa_best", ms, backend=backend)
        del sets
        torch.cuda.empty_cache()
    print("\nbest per case (vs shipped, vs SDPA's best):")
    for B, T in cases:
        rs = [r for r in records if r.shape["B"] == B and r.shape["T"] == T]
        by = {r.kernel: r for r in rs}
        best = min((r for r in rs if r.kernel.startswith("rows")), key=lambda r: r.time_ms, default=None)
        for r in (by.get("shipped"), by.get("shipped+pdl"), best):
            if r is not None:
                print(f"  B={B} T={T:6d} {r.kernel:>12s} {r.time_ms * 1e3:7.1f} µs {r.pct_roofline:5.1f}% "
                      f"{by['shipped'].time_ms / r.time_ms:5.2f}x shipped {by['sdpa_best'].time_ms / r.time_ms:5.2f}x sdpa "
                      f"{ {k: r.extra[k] for k in ('block_t', 'num_warps', 'num_stages', 'splits') if k in r.extra} }")
    meta = run_meta(roofline_gbps=roofline)
    print("wrote", save_records(records, "triton_variants", directory=args.out, meta=meta))
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
