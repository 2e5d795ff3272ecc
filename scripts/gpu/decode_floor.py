"""What bounds flash-decoding at short contexts: the read floor, the launch floor, the merge.

    PYTHONPATH=. python scripts/gpu/decode_floor.py [--out DIR] [--contexts 2048,4096,8192,32768]

At T = 2048 (B = 1, 32 heads, d = 128, fp16) the cache is 33.6 MB, under 8 µs at the copy
roofline, so fixed costs weigh as much as bandwidth. This script times, in one process and
the way every record is timed (CUDA graph, KV rotated past the L2, median):

* ``read_tiles``: a kernel that only reads K and V, in the attention kernel's own tiles and
  grid ([BLOCK_T, D] rows, ``B·H × splits`` programs), best of a sweep over tile, warps,
  stages and splits. No attention kernel that reads the cache this way can beat it.
* ``read_flat``: the same bytes read as flat 1-D blocks, best over block size and grid: the
  best this GPU reads that many bytes in one kernel, whatever the layout.
* ``empty_1``, ``empty_2``: one and two empty kernels a call: what a launch costs in a graph.
* ``split_only``: the shipped split kernel without its merge; ``merge_only``: the merge alone.
* ``shipped``: :func:`labkit.attention.triton_decode.flash_decode` as the course runs it.
* ``merge_in_kernel``: a candidate. The shipped split kernel's code (one head on the tensor
  cores), then each program counts itself done (one acq_rel atomic after a barrier) and the
  last of its head merges the partials (L2 loads, ``.cg``) and resets the counter for the
  next replay: one launch instead of two. Checked against the float64 reference first.
* ``sdpa_best``: SDPA's fastest backend.

It ends with SDPA's time over 1.5 at each context (a kernel 1.5× as fast), beside the floors. Writes
``decode_floor_<gpu>.json``. GPU only.
"""

from __future__ import annotations

import argparse
import os
import sys

import labkit  # noqa: F401  (decides the mode before triton is imported)
import torch
import triton
import triton.language as tl

from labkit import runtime
from labkit.attention import reference_decode
from labkit.attention.reference import decode_bytes
from labkit.attention.splits import LOG2E
from labkit.attention.triton_decode import _attend_kernel, _merge_kernel, config_for, constexprs, flash_decode, plan_splits
from labkit.attention.triton_plan import workspace
from labkit.bench import Record, copy_roofline_gbps, gbps, rotation_count, run_meta, save_records
from labkit.bench.attention import make_decode_inputs
from labkit.checks.core import TOLERANCE, rel_error

sys.path.insert(0, os.path.dirname(__file__))
from triton_attention import sdpa_best, timed  # noqa: E402

H, D = 32, 128


@triton.jit
def _read_tiles_kernel(
    K, V,  # [B·H, T, D] the cache
    Out,  # [B·H, num_splits] fp32: one sum per program, so the loads cannot be dropped
    T,  # tokens per sequence
    num_splits,  # programs per (sequence, head) along T
    HEAD_DIM: tl.constexpr,
    BLOCK_T: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    tiles_per_split = tl.cdiv(tl.cdiv(T, BLOCK_T), num_splits)
    t_begin = split * tiles_per_split * BLOCK_T
    t_end = tl.minimum(t_begin + tiles_per_split * BLOCK_T, T)
    offs_t = tl.arange(0, BLOCK_T)[:, None]
    offs_d = tl.arange(0, HEAD_DIM)[None, :]
    base = bh.to(tl.int64) * T * HEAD_DIM
    acc = tl.zeros([BLOCK_T, HEAD_DIM], dtype=K.dtype.element_ty)  # the cache's dtype: the fewest registers
    for start in tl.range(t_begin, t_end, BLOCK_T, num_stages=NUM_STAGES):
        t = start + offs_t
        offs = base + t.to(tl.int64) * HEAD_DIM + offs_d
        acc += tl.load(K + offs, mask=t < t_end, other=0.0) + tl.load(V + offs, mask=t < t_end, other=0.0)
    tl.store(Out + bh * num_splits + split, tl.sum(acc.to(tl.float32)))


@triton.jit
def _read_flat_kernel(
    K, V,  # the cache as flat arrays of n elements
    Out,  # [programs] fp32
    n,  # elements in K (and in V)
    per_program,  # elements each program reads from K and from V, a multiple of BLOCK
    BLOCK: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    pid = tl.program_id(0)
    begin = pid.to(tl.int64) * per_program
    end = tl.minimum(begin + per_program, n)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=K.dtype.element_ty)
    for start in tl.range(begin, end, BLOCK, num_stages=NUM_STAGES):
        i = start + offs
        acc += tl.load(K + i, mask=i < end, other=0.0) + tl.load(V + i, mask=i < end, other=0.0)
    tl.store(Out + pid, tl.sum(acc.to(tl.float32)))


@triton.jit
def _empty_kernel(X):
    pass


@triton.jit
def _merge_in_kernel(
    Q, K, V, Out,  # as _attend_kernel's (one head per KV head, contiguous [B·H, T, D])
    Mws, Lws, Accws,  # the split partials, as _attend_kernel writes them
    Counts,  # [B·H] int32, zero: programs of each head done so far (reset by the merging one)
    qk_scale, T, num_splits,
    HKV: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_T: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    SPLITS_P: tl.constexpr,  # num_splits rounded up to a power of two
):
    # 1. The shipped split kernel's code: this program's partial (m, l, acc) into the workspace.
    _attend_kernel(Q, K, V, Q, Q, Q, Q, Q, Out, Mws, Lws, Accws, qk_scale, T, num_splits, 0,
                   HKV, 1, 16, 1, HEAD_DIM, BLOCK_T, 1, NUM_STAGES, False, False, True, False, True)
    # 2. Count this program done. The barrier orders every thread's partial stores before the
    #    one thread's release; the acquire lets the last program see the others' stores.
    tl.debug_barrier()
    row = tl.program_id(0)
    done = tl.atomic_add(Counts + row, 1, sem="acq_rel", scope="gpu")
    # 3. The last program of the head merges by log-sum-exp, reading the partials from the L2
    #    (.cg: never a line this SM's L1 kept), and leaves the counter at zero for the next call.
    if done == num_splits - 1:
        offs_s = tl.arange(0, SPLITS_P)
        offs_d = tl.arange(0, HEAD_DIM)
        mask_s = offs_s < num_splits
        base = row.to(tl.int64) * num_splits
        m = tl.load(Mws + base + offs_s, mask=mask_s, other=float("-inf"), cache_modifier=".cg")
        l = tl.load(Lws + base + offs_s, mask=mask_s, other=0.0, cache_modifier=".cg")
        acc = tl.load(Accws + (base + offs_s[:, None]) * HEAD_DIM + offs_d[None, :], mask=mask_s[:, None],
                      other=0.0, cache_modifier=".cg")
        w = tl.exp2(m - tl.max(m, axis=0))
        out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
        tl.store(Out + row.to(tl.int64) * HEAD_DIM + offs_d, out.to(Out.dtype.element_ty))
        tl.store(Counts + row, 0)


_COUNTS: dict[int, torch.Tensor] = {}


def shipped_plan(q, k):
    """The shipped launch's configuration, split count and workspace views for one head per KV head."""
    B, Hq, _ = q.shape
    T = k.shape[2]
    cfg = config_for(D, 1, T, itemsize=k.element_size())
    S = plan_splits(B, Hq, Hq, T, cfg)
    return cfg, S, workspace(q.device, B, Hq, S, D)


def split_kernel(q, k, v, out, cfg, S, ws):
    """The shipped split kernel alone: partials into ``ws``, nothing merged."""
    B, Hq, _ = q.shape
    meta = constexprs(Hq, 1, D, cfg, bs=1, has_lengths=False, has_rope=False, split=True, paged=False)
    _attend_kernel[(B * Hq, S)](q, k, v, q, q, q, q, q, out, *ws, D ** -0.5 * LOG2E, k.shape[2], S, 0, **meta,
                                num_warps=cfg.num_warps)


def merge_in_kernel(q, k, v):
    B, Hq, _ = q.shape
    cfg, S, ws = shipped_plan(q, k)
    assert cfg.use_dot, "the candidate is the tensor-core path's (sm_90+, fp16)"
    counts = _COUNTS.setdefault(B * Hq, torch.zeros(B * Hq, dtype=torch.int32, device=q.device))
    out = torch.empty_like(q)
    _merge_in_kernel[(B * Hq, S)](q, k, v, out, *ws, counts, D ** -0.5 * LOG2E, k.shape[2], S, HKV=Hq, HEAD_DIM=D,
                                  BLOCK_T=cfg.block_t, NUM_STAGES=cfg.num_stages,
                                  SPLITS_P=triton.next_power_of_2(S), num_warps=cfg.num_warps)
    return out


def shipped_parts(q, k, v, *, split: bool = True, merge: bool = True):
    """The shipped launch with either kernel left out (its output is then not attention)."""
    cfg, S, ws = shipped_plan(q, k)
    out = torch.empty_like(q)
    if split:
        split_kernel(q, k, v, out, cfg, S, ws)
    if merge:
        _merge_kernel[(q.shape[0] * q.shape[1],)](*ws, out, S, HEAD_DIM=D, SPLITS_P=triton.next_power_of_2(S),
                                                  num_warps=4)
    return out


def read_tiles(block_t, warps, stages, splits):
    def run(q, k, v):
        out = torch.empty(k.shape[0] * k.shape[1], splits, dtype=torch.float32, device=k.device)
        _read_tiles_kernel[(k.shape[0] * k.shape[1], splits)](k, v, out, k.shape[2], splits, HEAD_DIM=D,
                                                             BLOCK_T=block_t, NUM_STAGES=stages, num_warps=warps)
        return out
    return run


def read_flat(block, warps, stages, programs):
    def run(q, k, v):
        n = k.numel()
        per = triton.cdiv(triton.cdiv(n, programs), block) * block
        grid = triton.cdiv(n, per)
        out = torch.empty(grid, dtype=torch.float32, device=k.device)
        _read_flat_kernel[(grid,)](k, v, out, n, per, BLOCK=block, NUM_STAGES=stages, num_warps=warps)
        return out
    return run


def empty(n):
    def run(q, k, v):
        for _ in range(n):
            _empty_kernel[(1,)](q)
        return q
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/results")
    ap.add_argument("--contexts", default="2048,4096,8192,32768")
    args = ap.parse_args()
    if runtime.is_sim():
        print("decode_floor times kernels: it needs a GPU")
        return 0
    roofline = copy_roofline_gbps()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"copy roofline {roofline:.0f} GB/s, {sms} SMs")
    records, failures = [], []
    for T in map(int, args.contexts.split(",")):
        nbytes = decode_bytes(1, H, H, T, D, 2)
        sets = [make_decode_inputs(1, H, H, T, D, torch.float16) for _ in range(rotation_count(nbytes))]
        expected = reference_decode(*sets[0])
        best: dict[str, Record] = {}

        def rec(kernel, ms, **extra):
            r = Record(kernel=kernel, shape=dict(B=1, Hq=H, Hkv=H, T=T, D=D), dtype="float16", bytes=nbytes,
                       time_ms=ms, gbps=gbps(nbytes, ms), pct_roofline=100 * gbps(nbytes, ms) / roofline, extra=extra)
            records.append(r)
            if kernel not in best or ms < best[kernel].time_ms:
                best[kernel] = r
            print(f"T={T:6d} {kernel:>15s} {ms * 1e3:8.2f} µs {r.pct_roofline:6.1f}%  {extra}", flush=True)

        for n in (1, 2):
            rec(f"empty_{n}", timed(empty(n), sets, 25, 100), kernels=n)
        for block_t, warps in ((64, 4), (128, 4), (128, 8)):
            for stages in (1, 2, 3):
                for splits in (8, 16, 32):
                    if splits * block_t <= T:
                        rec("read_tiles", timed(read_tiles(block_t, warps, stages, splits), sets, 25, 100),
                            block_t=block_t, num_warps=warps, num_stages=stages, splits=splits)
        for block, warps in ((2048, 4), (4096, 8), (8192, 8)):
            for stages in (1, 3):
                for waves in (1, 2, 4):
                    programs = waves * 4 * sms
                    rec("read_flat", timed(read_flat(block, warps, stages, programs), sets, 25, 100),
                        block=block, num_warps=warps, num_stages=stages, programs=programs)
        rec("split_only", timed(lambda q, k, v: shipped_parts(q, k, v, merge=False), sets, 25, 100))
        rec("merge_only", timed(lambda q, k, v: shipped_parts(q, k, v, split=False), sets, 25, 100))
        for name, fn in (("shipped", lambda q, k, v: flash_decode(q, k, v)), ("merge_in_kernel", merge_in_kernel)):
            for trial in range(2):  # twice: the candidate's counters must come back to zero
                err = rel_error(fn(*sets[trial % len(sets)]), reference_decode(*sets[trial % len(sets)]))
                if not err <= TOLERANCE[torch.float16]:
                    failures.append(f"{name} T={T} call {trial}: rel error {err:.2e}")
            if not any(f.startswith(f"{name} T={T}") for f in failures):
                rec(name, timed(fn, sets, 25, 100), rel_error=err)
        ms, backend = sdpa_best(sets, expected, False, 25, 100)
        rec("sdpa_best", ms, backend=backend)
        want = ms / 1.5
        floor = min(best["read_tiles"].time_ms, best["read_flat"].time_ms)
        print(f"T={T}: 1.5x SDPA needs {want * 1e3:.2f} µs; the best pure read takes {floor * 1e3:.2f} µs "
              f"({'within' if floor <= want else 'above'} it); shipped {best['shipped'].time_ms * 1e3:.2f} µs"
              + (f", merge in kernel {best['merge_in_kernel'].time_ms * 1e3:.2f} µs" if "merge_in_kernel" in best else ""))
        del sets
        torch.cuda.empty_cache()
    print("wrote", save_records(records, "decode_floor", directory=args.out, meta=run_meta(roofline_gbps=roofline)))
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
