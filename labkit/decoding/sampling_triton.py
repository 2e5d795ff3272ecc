"""Top-k / top-p sampling in one Triton kernel, without sorting the vocabulary.

``torch``'s usual top-p sampler sorts every row (``V log V`` work and several full-size
temporaries: sorted logits, their softmax, a cumulative sum, a scatter back), then samples.
This kernel never sorts. One program handles one row of logits ``[V]`` in a small fixed
number of passes over it:

1. **statistics**: the row's largest and smallest logit and the softmax normaliser
   ``Z = Σ exp((x - max) / T)`` (an online sum, as in flash attention);
2. **threshold search by bisection** (with top-p alone, first a pass that keeps only the tokens
   that can possibly be in the top-p set: the search and the draw then read a few hundred tokens
   instead of the whole vocabulary): every token that survives top-k and top-p is at least as
   likely as the least likely survivor, so the kept set is ``{x ≥ t}`` for one threshold ``t``.
   ``t`` is found by bisection, one pass per step, each pass a block-wide reduction: for top-k,
   the largest ``t`` with ``count(x ≥ t) ≥ k``; then, for top-p, the largest ``t`` with
   ``mass(x ≥ t) ≥ top_p · mass(top-k set)``. The search runs over the float's bits read as an
   ordered integer (:func:`ordered_key`), so at most 32 steps land exactly on a logit;
3. **the draw**: the Gumbel-max trick (the "exponential race" in log space): add independent
   Gumbel noise ``-log(-log u)`` to every surviving ``x / T`` and take the argmax. Token ``i``
   wins with probability ``exp(x_i / T) / Σ_kept exp(x_j / T)``: exactly the renormalised
   top-k/top-p distribution, with no cumulative sum.

Ties at the threshold are all kept (a sort-based sampler keeps an arbitrary subset of them).
Masks are plain comparisons (``offs < V``), so the kernel runs in Triton's interpreter too.

    tokens = sample_top_k_top_p(logits, temperature=0.8, top_p=0.9, seed=1)   # [B] int64
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def ordered_key(x):
    """float32 -> int32 with the same order (-0.0 just below +0.0): bisect on it exactly."""
    bits = x.to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def _search_step(row_ptr, V, lo, hi, m, inv_temp, target, BY_COUNT: tl.constexpr,
                 NPIV: tl.constexpr, BLOCK_V: tl.constexpr):
    """One pass of a NPIV-ary search: test NPIV thresholds between lo and hi at once.

    The predicate is ``count(key >= t) >= target`` (BY_COUNT) or ``mass(key >= t) >= target``,
    with mass = Σ exp((x - m) / T). Returns the new (lo, hi) and the mass kept at the new lo
    (-1 when lo did not move).
    """
    t = lo + ((hi - lo) * tl.arange(0, NPIV)) // NPIV  # t[0] = lo
    count = tl.full([NPIV], 0.0, tl.float32)
    mass = tl.full([NPIV], 0.0, tl.float32)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        valid = offs < V
        x = tl.load(row_ptr + offs, mask=valid, other=float("-inf")).to(tl.float32)
        bits = x.to(tl.int32, bitcast=True)  # ordered_key(x), inlined: the interpreter loses track of nested jit calls
        key = tl.where(valid, tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits), -2147483648).to(tl.int64)
        ge = (key[:, None] >= t[None, :]) & valid[:, None]
        count += tl.sum(ge.to(tl.float32), axis=0)
        mass += tl.sum(tl.where(ge, tl.exp((x - m) * inv_temp)[:, None], 0.0), axis=0)
    if BY_COUNT:
        ok = count >= target
    else:
        ok = mass >= target
    new_lo = tl.max(tl.where(ok, t, lo), axis=0)
    new_hi = tl.min(tl.where(ok, hi, t), axis=0)
    kept = tl.min(tl.where(ok & (t > lo), mass, float("inf")), axis=0)
    return new_lo, new_hi, tl.where(new_lo > lo, kept, -1.0)


@triton.jit
def top_k_top_p_sample_kernel(
    logits_ptr,  # [B, V] logits (any float dtype), row stride stride_b, last dim contiguous
    out_ptr,  # [B, SAMPLES] int64: the drawn tokens of each row
    V, stride_b,  # vocabulary size; row stride of logits
    inv_temp,  # 1 / temperature (> 0)
    top_k,  # keep the top_k most likely tokens (used when USE_TOP_K)
    top_p,  # keep the most likely tokens whose mass reaches top_p (used when USE_TOP_P)
    seed,  # random seed: draw s of row b uses the stream (seed, (b * SAMPLES + s) * V + token)
    cand_x_ptr, cand_i_ptr,  # [B, V] float32 / int32 scratch for the candidates (COMPACT only)
    USE_TOP_K: tl.constexpr,
    COMPACT: tl.constexpr,  # top-p alone: search and draw among the few tokens that can be kept
    USE_TOP_P: tl.constexpr,
    BLOCK_V: tl.constexpr,  # tokens per tile in the first and last pass (a power of two)
    BLOCK_S: tl.constexpr,  # tokens per tile in the search passes ([BLOCK_S, NPIV] comparisons)
    NPIV: tl.constexpr,  # thresholds tested per search pass: about 32 / log2(NPIV) passes
    SAMPLES: tl.constexpr,  # independent draws per row (a power of two; 1 when decoding)
):
    b = tl.program_id(0)
    row_ptr = logits_ptr + b.to(tl.int64) * stride_b

    # Pass 1: max, normaliser Z (an online sum, rescaled as the max grows), smallest and largest key.
    m = tl.full([], float("-inf"), tl.float32)  # the row's largest logit so far
    z = tl.zeros([], tl.float32)  # Σ exp((x - m) / T), rescaled whenever m grows
    kmin = tl.full([], 2147483647, tl.int32)  # smallest and largest ordered_key(x)
    kmax = tl.full([], -2147483648, tl.int32)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        valid = offs < V
        x = tl.load(row_ptr + offs, mask=valid, other=float("-inf")).to(tl.float32)
        key = ordered_key(x)
        kmin = tl.minimum(kmin, tl.min(tl.where(valid, key, 2147483647), axis=0))
        kmax = tl.maximum(kmax, tl.max(tl.where(valid, key, -2147483648), axis=0))
        m_new = tl.maximum(m, tl.max(x, axis=0))
        z = z * tl.exp((m - m_new) * inv_temp) + tl.sum(tl.where(valid, tl.exp((x - m_new) * inv_temp), 0.0), axis=0)
        m = m_new

    # COMPACT (top-p without top-k): a token with (x - m) / T < -ln(V / (1 - top_p)) has probability
    # under (1 - top_p) / V, so all of them together under 1 - top_p: none can be in the top-p set.
    # One pass copies the others (usually a few hundred of a 128k vocabulary) with their ids, and the
    # search and the draw then read only those.
    src_ptr = row_ptr
    n_src = V
    if COMPACT:
        bound = m - tl.log(V / (1.0 - top_p)) / inv_temp - 1e-3
        cx_ptr = cand_x_ptr + b.to(tl.int64) * V
        ci_ptr = cand_i_ptr + b.to(tl.int64) * V
        n_cand = tl.full([], 0, tl.int32)
        for start in range(0, V, BLOCK_V):
            offs = start + tl.arange(0, BLOCK_V)
            valid = offs < V
            x = tl.load(row_ptr + offs, mask=valid, other=float("-inf")).to(tl.float32)
            keep = valid & (x >= bound)
            pos = n_cand + tl.cumsum(keep.to(tl.int32), axis=0) - 1
            tl.store(cx_ptr + pos, x, mask=keep)
            tl.store(ci_ptr + pos, offs, mask=keep)
            n_cand += tl.sum(keep.to(tl.int32), axis=0)
        tl.debug_barrier()  # the candidates written by every thread, before any thread reads them
        src_ptr = cx_ptr
        n_src = n_cand

    # Passes 2…: NPIV-ary search (bisection with NPIV - 1 pivots a pass). The predicate holds at lo, fails at hi.
    lo = kmin.to(tl.int64)
    z_kept = z
    if USE_TOP_K:
        hi = kmax.to(tl.int64) + 1
        while hi - lo > 1:
            lo, hi, kept = _search_step(src_ptr, n_src, lo, hi, m, inv_temp, top_k.to(tl.float32), True, NPIV, BLOCK_S)
            z_kept = tl.where(kept >= 0, kept, z_kept)
    if USE_TOP_P:
        target = top_p * z_kept
        hi = kmax.to(tl.int64) + 1
        while hi - lo > 1:
            lo, hi, kept = _search_step(src_ptr, n_src, lo, hi, m, inv_temp, target, False, NPIV, BLOCK_S)

    # Last pass: Gumbel-max over the survivors {key >= lo}, SAMPLES independent draws at once.
    draws = tl.arange(0, SAMPLES)
    best = tl.full([SAMPLES], float("-inf"), tl.float32)
    best_i = tl.full([SAMPLES], 0, tl.int32)
    for start in range(0, n_src, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        valid = offs < n_src
        x = tl.load(src_ptr + offs, mask=valid, other=float("-inf")).to(tl.float32)
        if COMPACT:
            ids = tl.load(ci_ptr + offs, mask=valid, other=0)
        else:
            ids = offs
        keep = valid & (ordered_key(x).to(tl.int64) >= lo)
        u = tl.rand(seed, (b * SAMPLES + draws[:, None]) * V + ids[None, :])  # [SAMPLES, BLOCK_V]
        u = tl.minimum(tl.maximum(u, 1e-7), 1.0 - 1e-7)
        gumbel = -tl.log(-tl.log(u))
        score = tl.where(keep[None, :], ((x - m) * inv_temp)[None, :] + gumbel, float("-inf"))
        blk_best = tl.max(score, axis=1)
        blk_arg = tl.argmax(score, axis=1)
        blk_id = tl.sum(tl.where(tl.arange(0, BLOCK_V)[None, :] == blk_arg[:, None], ids[None, :], 0), axis=1)
        better = blk_best > best
        best_i = tl.where(better, blk_id, best_i)
        best = tl.maximum(best, blk_best)
    tl.store(out_ptr + b * SAMPLES + draws, best_i.to(tl.int64))


@triton.jit
def top_p_sample_kernel(
    logits_ptr,  # [B, V] logits, row b at logits_ptr + b * stride_b, tokens contiguous
    out_ptr,  # [B, SAMPLES] int64: SAMPLES independent draws from row b
    V, stride_b,  # vocabulary size; row stride
    inv_temp,  # 1 / temperature
    top_p,  # keep the most likely tokens whose probability reaches top_p
    seed,  # draw s of row b uses tl.rand(seed, (b * SAMPLES + s) * V + token)
    BLOCK_V: tl.constexpr,  # tokens per tile (a power of two)
    SAMPLES: tl.constexpr,  # draws per row (a power of two)
):
    """Top-p sampling by plain bisection (one pass per step): the notebook's exercise, simplest form.

    :func:`top_k_top_p_sample_kernel` is the fast one (16 thresholds per pass, top-k too).
    """
    b = tl.program_id(0)
    row_ptr = logits_ptr + b.to(tl.int64) * stride_b
    m = tl.full([], float("-inf"), tl.float32)  # the row's largest logit so far
    z = tl.zeros([], tl.float32)  # Σ exp((x - m) / T), rescaled whenever m grows
    kmin = tl.full([], 2147483647, tl.int32)  # smallest and largest ordered_key(x)
    kmax = tl.full([], -2147483648, tl.int32)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        valid = offs < V
        x = tl.load(row_ptr + offs, mask=valid, other=float("-inf")).to(tl.float32)
        key = ordered_key(x)
        kmin = tl.minimum(kmin, tl.min(tl.where(valid, key, 2147483647), axis=0))
        kmax = tl.maximum(kmax, tl.max(tl.where(valid, key, -2147483648), axis=0))
        m_new = tl.maximum(m, tl.max(x, axis=0))
        z = z * tl.exp((m - m_new) * inv_temp) + tl.sum(tl.where(valid, tl.exp((x - m_new) * inv_temp), 0.0), axis=0)
        m = m_new
    # Bisection over the keys: mass(key >= lo) >= top_p * z always holds; at hi it never does.
    lo = kmin.to(tl.int64)
    hi = kmax.to(tl.int64) + 1
    while hi - lo > 1:
        mid = lo + (hi - lo) // 2
        mass = tl.full([], 0.0, tl.float32)
        for start in range(0, V, BLOCK_V):
            offs = start + tl.arange(0, BLOCK_V)
            valid = offs < V
            x = tl.load(row_ptr + offs, mask=valid, other=float("-inf")).to(tl.float32)
            keep = valid & (ordered_key(x).to(tl.int64) >= mid)
            mass += tl.sum(tl.where(keep, tl.exp((x - m) * inv_temp), 0.0), axis=0)
        ok = mass >= top_p * z
        lo = tl.where(ok, mid, lo)
        hi = tl.where(ok, hi, mid)
    # Gumbel-max among the survivors {key >= lo}: SAMPLES draws at once.
    draws = tl.arange(0, SAMPLES)
    best = tl.full([SAMPLES], float("-inf"), tl.float32)
    best_i = tl.full([SAMPLES], 0, tl.int32)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        valid = offs < V
        x = tl.load(row_ptr + offs, mask=valid, other=float("-inf")).to(tl.float32)
        keep = valid & (ordered_key(x).to(tl.int64) >= lo)
        u = tl.rand(seed, (b * SAMPLES + draws[:, None]) * V + offs[None, :])
        u = tl.minimum(tl.maximum(u, 1e-7), 1.0 - 1e-7)
        score = tl.where(keep[None, :], ((x - m) * inv_temp)[None, :] - tl.log(-tl.log(u)), float("-inf"))
        blk_best = tl.max(score, axis=1)
        better = blk_best > best
        best_i = tl.where(better, start + tl.argmax(score, axis=1), best_i)
        best = tl.maximum(best, blk_best)
    tl.store(out_ptr + b * SAMPLES + draws, best_i.to(tl.int64))


def sample_top_p(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 0.9, seed: int = 0, *,
                 num_samples: int = 1, kernel=None) -> torch.Tensor:
    """Launch a kernel with :func:`top_p_sample_kernel`'s signature (default: that one), one program
    per row of ``logits [B, V]`` -> int64 ``[B]`` (``[B, num_samples]`` when ``num_samples > 1``)."""
    from labkit.decoding.sampling import check_sampling

    check_sampling(temperature, None, top_p)
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (0 is greedy: use logits.argmax(-1))")
    rows = logits.reshape(1, -1) if logits.dim() == 1 else logits
    if rows.dim() != 2:
        raise ValueError(f"logits must be [V] or [B, V], got {list(logits.shape)}")
    rows = rows if rows.stride(-1) == 1 else rows.contiguous()
    B, V = rows.shape
    S = triton.next_power_of_2(num_samples)
    if num_samples < 1 or S * B * V >= 2**31:
        raise ValueError(f"num_samples must be >= 1 with num_samples * B * V < 2**31, got {num_samples}")
    out = torch.full((B, S), -1, dtype=torch.int64, device=rows.device)
    block_v = _block_v(V) if S == 1 else max(16, min(_block_v(V), 8192 // S))
    (kernel or top_p_sample_kernel)[(B,)](rows, out, V, rows.stride(0), 1.0 / temperature, float(top_p),
                                          int(seed) & 0x7FFFFFFF, BLOCK_V=block_v, SAMPLES=S)
    out = out[:, :num_samples]
    out = out[:, 0] if num_samples == 1 else out
    return out[0] if logits.dim() == 1 else out


def _block_v(V: int) -> int:
    return min(4096, max(16, triton.next_power_of_2(V)))


def sample_top_k_top_p(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                       top_p: float | None = None, seed: int = 0, *, num_samples: int = 1,
                       kernel=None) -> torch.Tensor:
    """Tokens drawn from each row of ``logits [B, V]`` (or ``[V]``) after top-k/top-p -> int64.

    Returns ``[B]`` (``[]`` for one row) with ``num_samples == 1``, else ``[B, num_samples]``
    independent draws per row. The same distribution as
    ``sample(probs(logits, temperature, top_k, top_p))`` (``labkit.decoding.sampling``) for a
    temperature > 0. ``kernel`` swaps in another kernel with the same signature (the notebook's
    exercise). The same ``seed`` gives the same tokens.
    """
    from labkit.decoding.sampling import check_sampling

    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        raise ValueError("temperature 0 is greedy: use logits.argmax(-1)")
    squeeze = logits.dim() == 1
    rows = logits.reshape(1, -1) if squeeze else logits
    if rows.dim() != 2:
        raise ValueError(f"logits must be [V] or [B, V], got {list(logits.shape)}")
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    B, V = rows.shape
    if num_samples < 1 or (num_samples * B * V) >= 2**31:
        raise ValueError(f"num_samples must be >= 1 with num_samples * B * V < 2**31, got {num_samples}")
    S = triton.next_power_of_2(num_samples)
    out = torch.empty(B, S, dtype=torch.int64, device=rows.device)
    use_k = top_k is not None and top_k < V
    use_p = top_p is not None and top_p < 1
    kernel = top_k_top_p_sample_kernel if kernel is None else kernel
    block_v = _block_v(V) if S == 1 else max(16, min(_block_v(V), 8192 // S))
    compact = use_p and not use_k and V > 4 * block_v
    cand_x = torch.empty(B, V, dtype=torch.float32, device=rows.device) if compact else rows
    cand_i = torch.empty(B, V, dtype=torch.int32, device=rows.device) if compact else out
    kernel[(B,)](rows, out, V, rows.stride(0), 1.0 / temperature, int(top_k or V), float(top_p or 1.0),
                 int(seed) & 0x7FFFFFFF, cand_x, cand_i, USE_TOP_K=use_k, COMPACT=compact, USE_TOP_P=use_p,
                 BLOCK_V=block_v,
                 BLOCK_S=min(_block_v(V), 512), NPIV=16, SAMPLES=S, num_warps=4 if V <= 8192 else 8)
    out = out[:, :num_samples]
    if num_samples == 1:
        out = out[:, 0]
    return out[0] if squeeze else out


def torch_top_p_sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                       top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The sort-based baseline: ``sample(probs(logits, ...))`` — a full ``torch.sort`` per row."""
    from labkit.decoding.sampling import probs, sample

    return sample(probs(logits, temperature, top_k, top_p), generator)


def bench_sampling(*, vocabs=(32768, 131072), batches=(1, 64), temperature: float = 1.0, top_k: int | None = None,
                   top_p: float = 0.9, dtype=torch.float32, kernel=None, top_p_kernel=None,
                   save: bool = False) -> list:
    """Time the one-pass sampler against the sort-based one (``torch.sort`` top-p) -> Records.

    For each vocabulary size and batch: logits ``randn · 3`` (a peaked, realistic spread),
    both samplers checked to keep the same support, then timed with CUDA events through a
    CUDA graph (``time_for_record``). ``extra['speedup']`` is torch's time over the kernel's.
    Bytes are one read of the logits. In sim mode: tiny sizes, correctness only (no times).
    ``top_p_kernel``: also time a kernel with :func:`top_p_sample_kernel`'s signature (the
    notebook's exercise) as "your kernel" (top-p only: give ``top_k=None``).
    ``save=True`` writes ``data/results/sampling_<gpu>.json``.
    """
    from labkit.bench.records import Record, run_meta, save_records
    from labkit.bench.timing import gbps, time_for_record
    from labkit.decoding.sampling import probs

    if runtime_is_sim():
        vocabs, batches = tuple(min(v, 200) for v in vocabs[:1]), tuple(min(b, 2) for b in batches[:1])
    device = "cpu" if runtime_is_sim() else "cuda"
    records = []
    for V in vocabs:
        for B in batches:
            gen = torch.Generator(device=device).manual_seed(V + B)
            logits = (torch.randn(B, V, device=device, generator=gen) * 3).to(dtype)
            ours = lambda: sample_top_k_top_p(logits, temperature, top_k, top_p, seed=7, kernel=kernel)  # noqa: E731
            theirs = lambda: torch_top_p_sample(logits, temperature, top_k, top_p, generator=gen)  # noqa: E731
            support = probs(logits, temperature, top_k, top_p) > 0
            drawn = ours()
            if not bool(support.gather(-1, drawn.view(B, 1)).all()):
                raise AssertionError(f"sampler drew a token outside the top-k/top-p set at V={V}, B={B}")
            shape = {"B": B, "V": V, "top_k": top_k, "top_p": top_p, "temperature": temperature}
            nbytes = B * V * logits.element_size()
            ms_t, ex_t = time_for_record(theirs)
            ms_o, ex_o = time_for_record(ours)
            records.append(Record("torch sort top-p", shape, str(dtype).replace("torch.", ""), nbytes, ms_t,
                                  gbps(nbytes, ms_t), None, ex_t))
            speed = {"speedup": ms_t / ms_o} if ms_t and ms_o else {}
            records.append(Record("triton one-pass", shape, str(dtype).replace("torch.", ""), nbytes, ms_o,
                                  gbps(nbytes, ms_o), None, {**ex_o, **speed}))
            if top_p_kernel is not None and top_k is None:
                yours = lambda: sample_top_p(logits, temperature, top_p, 7, kernel=top_p_kernel)  # noqa: E731
                if not bool(support.gather(-1, yours().view(B, 1)).all()):
                    raise AssertionError(f"your kernel drew a token outside the top-p set at V={V}, B={B}")
                ms_y, ex_y = time_for_record(yours)
                speed = {"speedup": ms_t / ms_y} if ms_t and ms_y else {}
                records.append(Record("your kernel", shape, str(dtype).replace("torch.", ""), nbytes, ms_y,
                                      gbps(nbytes, ms_y), None, {**ex_y, **speed}))
    if save and not runtime_is_sim():
        save_records(records, "sampling", run_meta())
    return records


def format_sampling(records) -> str:
    """A table: V, B, then each sampler's time (ms) and its speedup over torch's sort."""
    names = list(dict.fromkeys(r.kernel for r in records))
    by = {(r.kernel, r.shape["V"], r.shape["B"]): r for r in records}
    shapes = list(dict.fromkeys((r.shape["V"], r.shape["B"]) for r in records))
    lines = [f"{'V':>7} {'B':>3} " + " ".join(f"{n:>22}" for n in names)]
    for V, B in shapes:
        cells = []
        for n in names:
            r = by.get((n, V, B))
            if r is None or r.time_ms is None:
                cells.append(f"{'—':>22}")
            else:
                sp = f" ({r.extra['speedup']:.1f}x)" if r.extra.get("speedup") else ""
                cells.append(f"{r.time_ms * 1e3:>12.1f} µs{sp:>7}")
        lines.append(f"{V:>7} {B:>3} " + " ".join(cells))
    return "\n".join(lines)


def runtime_is_sim() -> bool:
    from labkit import runtime

    return runtime.is_sim()


if __name__ == "__main__":  # python -m labkit.decoding.sampling_triton: the GPU benchmark, recorded
    recs = bench_sampling(save=True)
    print(format_sampling(recs))


__all__ = ["bench_sampling", "format_sampling", "ordered_key", "sample_top_p", "top_p_sample_kernel", "sample_top_k_top_p", "top_k_top_p_sample_kernel", "torch_top_p_sample"]
