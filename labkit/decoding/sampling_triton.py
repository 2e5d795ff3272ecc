"""Top-k / top-p sampling in one Triton kernel, without sorting the vocabulary.

``torch``'s usual top-p sampler sorts every row (``V log V`` work and several full-size
temporaries: sorted logits, their softmax, a cumulative sum, a scatter back), then samples.
This kernel never sorts. One program handles one row of logits ``[V]`` in a small number of
passes over it:

1. **statistics**: the row's max ``m`` and the softmax normaliser ``Z = Σ exp((x - m) / T)``,
   each lane keeping its own online (max, sum) pair, combined once at the end;
2. **top-k** (if asked): every surviving token is at least as likely as the least likely
   survivor, so the kept set is ``{x ≥ t}`` for one threshold ``t``: the largest ``t`` with
   ``count(x ≥ t) ≥ k``. It is found by an NPIV-ary search over the float's bits read as an
   ordered integer (:func:`ordered_key`): each pass tests NPIV thresholds at once and keeps the
   bracket ``[lo, hi)`` where the answer lies, so about 32 / log2(NPIV) passes land exactly on
   a logit, fewer when the bracket holds a single token early;
3. **candidates**: one pass writes out the weights ``p = exp((x - m) / T)`` of the tokens that
   can still be kept, with their ids. With top-p that excludes every ``p < (1 - top_p) / V``:
   all such tokens together hold less than ``1 - top_p`` of the mass, so none can be in the
   top-p set. At a peaked distribution that leaves a few hundred of a 128k vocabulary;
4. **top-p** (if asked): the same search over the candidates' weights for the largest ``t``
   with ``mass(p ≥ t) ≥ top_p · Z_kept`` (``Z_kept``: the mass of the top-k set);
5. **the draw**: the exponential race among the kept candidates: token ``i`` wins
   ``argmax p_i / E_i`` with ``E_i ~ Exp(1)`` with probability ``p_i / Σ_kept p_j``, exactly
   the renormalised top-k/top-p distribution, with no cumulative sum.

Sums across a pass live in per-lane registers (``[BLOCK, NPIV]`` for a search pass) and are
reduced once after the loop: a block-wide reduction per tile costs a barrier per tile, which
dominated the first version of this kernel at 128k tokens. Ties at the threshold are all kept
(a sort-based sampler keeps an arbitrary subset of them). Masks are plain comparisons
(``offs < V``), so the kernel runs in Triton's interpreter too.

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
def _pivot_pass(src_ptr, n, t, FROM_LOGITS: tl.constexpr, BLOCK: tl.constexpr, NPIV: tl.constexpr):
    """One read of ``src[:n]``: for each of the NPIV pivots ``t`` (int32), how many elements have
    a key ``>= t`` and (candidates only) their total weight.

    ``FROM_LOGITS``: ``src`` holds logits, keyed by :func:`ordered_key`; otherwise it holds the
    candidates' weights ``p >= 0``, whose float bits already order like the values. The sums
    live in ``[BLOCK, NPIV]`` registers and are reduced once, after the loop: a block-wide
    reduction per tile would cost a barrier per tile, which dominates at 128k tokens.
    """
    cnt = tl.zeros([BLOCK, NPIV], tl.int32)
    mass = tl.zeros([BLOCK, NPIV], tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        valid = offs < n
        if FROM_LOGITS:
            x = tl.load(src_ptr + offs, mask=valid, other=float("-inf")).to(tl.float32)
            bits = x.to(tl.int32, bitcast=True)  # ordered_key, inlined (see top_k_top_p_sample_kernel)
            key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
        else:
            p = tl.load(src_ptr + offs, mask=valid, other=0.0)
            key = p.to(tl.int32, bitcast=True)
        ge = (key[:, None] >= t[None, :]) & valid[:, None]
        cnt += ge.to(tl.int32)
        if not FROM_LOGITS:
            mass += tl.where(ge, p[:, None], 0.0)
    return tl.sum(cnt, axis=0), tl.sum(mass, axis=0)


@triton.jit
def _narrow(lo, hi, c_lo, c_hi, t, ok, cnt):
    """The bracket after one pass: lo moves to the largest pivot where the predicate holds, hi to
    the smallest where it fails; c_lo, c_hi are the element counts at lo and hi."""
    new_lo = tl.max(tl.where(ok, t, lo), axis=0)
    new_hi = tl.min(tl.where(ok, hi, t), axis=0)
    c_lo = tl.max(tl.where(t == new_lo, cnt, 0), axis=0)  # lo is always a pivot (t[0] = lo)
    c_hi = tl.where(new_hi == hi, c_hi, tl.max(tl.where(t == new_hi, cnt, 0), axis=0))
    return new_lo, new_hi, c_lo, c_hi


@triton.jit
def top_k_top_p_sample_kernel(
    logits_ptr,  # [B, V] logits (any float dtype), row stride stride_b, last dim contiguous
    out_ptr,  # [B, SAMPLES] int64: the drawn tokens of each row
    V, stride_b,  # vocabulary size; row stride of logits
    inv_temp,  # 1 / temperature (> 0)
    top_k,  # keep the top_k most likely tokens (used when USE_TOP_K)
    top_p,  # keep the most likely tokens whose mass reaches top_p (used when USE_TOP_P)
    seed,  # random seed: draw s of row b uses the stream (seed, (b * SAMPLES + s) * V + token)
    cand_p_ptr, cand_i_ptr,  # [B, V] float32 / int32 scratch: the candidates' weights and token ids
    USE_TOP_K: tl.constexpr,
    USE_TOP_P: tl.constexpr,
    BLOCK_V: tl.constexpr,  # tokens per tile when reading the row (a power of two)
    BLOCK_S: tl.constexpr,  # tokens per tile in the search passes ([BLOCK_S, NPIV] comparisons)
    NPIV: tl.constexpr,  # thresholds tested per search pass: log2(NPIV) bits of the threshold a pass
    SAMPLES: tl.constexpr,  # independent draws per row (a power of two; 1 when decoding)
):
    b = tl.program_id(0)
    row_ptr = logits_ptr + b.to(tl.int64) * stride_b
    lanes = tl.arange(0, BLOCK_V)

    # Pass 1: the row's max m and normaliser Z = Σ exp((x - m) / T). Each lane keeps its own
    # online (max, sum) pair; they are combined once at the end.
    m_lane = tl.full([BLOCK_V], float("-inf"), tl.float32)
    z_lane = tl.zeros([BLOCK_V], tl.float32)
    for start in range(0, V, BLOCK_V):
        offs = start + lanes
        x = tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m_lane, x)
        m_ref = tl.where(m_new > float("-inf"), m_new, 0.0)  # a lane that has seen only -inf: no inf - inf
        z_lane = z_lane * tl.exp((m_lane - m_ref) * inv_temp) + tl.exp((x - m_ref) * inv_temp)
        m_lane = m_new
    m = tl.max(m_lane, axis=0)
    z = tl.sum(z_lane * tl.exp((m_lane - m) * inv_temp), axis=0)

    # Pass 2 (top-k only): the k-th largest logit t_k, by NPIV-ary search over ordered keys, counting.
    # The bracket [lo, hi): count(key >= lo) >= k holds, count(key >= hi) >= k fails.
    key_k = tl.full([], -2147483648, tl.int64)
    if USE_TOP_K:
        lo = key_k
        hi = ordered_key(m).to(tl.int64) + 1
        c_lo = tl.zeros([], tl.int32) + V
        c_hi = tl.zeros([], tl.int32)
        while (hi - lo > 1) & (c_lo - c_hi > 1):  # one element left in [lo, hi): lo is exact
            t = lo + ((hi - lo) * tl.arange(0, NPIV)) // NPIV  # t[0] = lo
            cnt, _ = _pivot_pass(row_ptr, V, t.to(tl.int32), True, BLOCK_S, NPIV)
            lo, hi, c_lo, c_hi = _narrow(lo, hi, c_lo, c_hi, t, (cnt >= top_k) | (t == lo), cnt)
        key_k = lo

    # Pass 3: keep the candidates, as weights p = exp((x - m) / T) in (0, 1] with their token ids.
    # With top-p, a token with p < (1 - top_p) / V can never be kept: all such tokens together hold
    # less than (1 - top_p) of any set containing the max (whose p is 1). At a peaked distribution
    # that leaves a few hundred of 128k tokens for the search. Z_kept: the mass of the top-k set.
    p_min = tl.zeros([], tl.float32)
    if USE_TOP_P:
        p_min += (1.0 - top_p) / V
    cp_ptr = cand_p_ptr + b.to(tl.int64) * V
    ci_ptr = cand_i_ptr + b.to(tl.int64) * V
    n_cand = tl.full([], 0, tl.int32)
    zk_lane = tl.zeros([BLOCK_V], tl.float32)
    for start in range(0, V, BLOCK_V):
        offs = start + lanes
        valid = offs < V
        x = tl.load(row_ptr + offs, mask=valid, other=float("-inf")).to(tl.float32)
        bits = x.to(tl.int32, bitcast=True)  # ordered_key, inlined: the interpreter mishandles nested jit calls
        in_k = valid & (tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64) >= key_k)
        p = tl.exp((x - m) * inv_temp)
        zk_lane += tl.where(in_k, p, 0.0)
        keep = in_k & (p >= p_min)
        pos = n_cand + tl.cumsum(keep.to(tl.int32), axis=0) - 1
        tl.store(cp_ptr + pos, p, mask=keep)
        tl.store(ci_ptr + pos, offs, mask=keep)
        n_cand += tl.sum(keep.to(tl.int32), axis=0)
    tl.debug_barrier()  # the candidates written by every thread, before any thread reads them
    z_kept = z
    if USE_TOP_K:
        z_kept = tl.sum(zk_lane, axis=0)

    # Pass 4… (top-p): the largest weight t with mass(p >= t) >= top_p * Z_kept, NPIV-ary search over
    # the weights' bits among the candidates only.
    p_lo = p_min.to(tl.int32, bitcast=True).to(tl.int64)
    if USE_TOP_P:
        lo = p_lo
        hi = tl.full([], 0x3F800001, tl.int64)  # the bits of 1.0, plus one: no p is above 1
        c_lo = n_cand
        c_hi = tl.zeros([], tl.int32)
        target = top_p * z_kept
        while (hi - lo > 1) & (c_lo - c_hi > 1):
            t = lo + ((hi - lo) * tl.arange(0, NPIV)) // NPIV
            cnt, mass = _pivot_pass(cp_ptr, n_cand, t.to(tl.int32), False, BLOCK_S, NPIV)
            lo, hi, c_lo, c_hi = _narrow(lo, hi, c_lo, c_hi, t, (mass >= target) | (t == lo), cnt)
        p_lo = lo

    # Last pass: the exponential race among the kept candidates {p >= p_lo}: token i wins
    # argmax_i p_i / E_i (E_i ~ Exp(1)) with probability p_i / Σ p. Each lane keeps its own best
    # of every draw; one reduction at the end.
    draws = tl.arange(0, SAMPLES)
    cand = tl.arange(0, BLOCK_S)
    best = tl.full([SAMPLES, BLOCK_S], -1.0, tl.float32)
    best_i = tl.full([SAMPLES, BLOCK_S], 0, tl.int32)
    for start in range(0, n_cand, BLOCK_S):
        offs = start + cand
        valid = offs < n_cand
        p = tl.load(cp_ptr + offs, mask=valid, other=0.0)
        ids = tl.load(ci_ptr + offs, mask=valid, other=0)
        keep = valid & (p.to(tl.int32, bitcast=True).to(tl.int64) >= p_lo)
        u = tl.rand(seed, (b * SAMPLES + draws[:, None]) * V + ids[None, :])  # [SAMPLES, BLOCK_S]
        e = -tl.log(tl.minimum(tl.maximum(u, 1e-7), 1.0 - 1e-7))
        score = tl.where(keep[None, :], p[None, :] / e, -1.0)
        better = score > best
        best_i = tl.where(better, ids[None, :], best_i)
        best = tl.where(better, score, best)
    win = tl.argmax(best, axis=1)
    token = tl.sum(tl.where(cand[None, :] == win[:, None], best_i, 0), axis=1)
    tl.store(out_ptr + b * SAMPLES + draws, token.to(tl.int64))


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


NPIV = 8  # thresholds per search pass: 3 bits a pass; 16 costs more compares than it saves passes


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
    block_v = _block_v(V)
    block_s = min(block_v, 512) if S == 1 else max(16, min(block_v, 8192 // S))
    cand_p = torch.empty(B, V, dtype=torch.float32, device=rows.device)
    cand_i = torch.empty(B, V, dtype=torch.int32, device=rows.device)
    kernel[(B,)](rows, out, V, rows.stride(0), 1.0 / temperature, int(top_k or V), float(top_p or 1.0),
                 int(seed) & 0x7FFFFFFF, cand_p, cand_i, USE_TOP_K=use_k, USE_TOP_P=use_p,
                 BLOCK_V=block_v, BLOCK_S=block_s, NPIV=NPIV, SAMPLES=S, num_warps=4 if V <= 8192 else 8)
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

    For each vocabulary size and batch: logits ``randn · 3``, both samplers checked to keep the
    same support, then timed with CUDA events through a CUDA graph (``time_for_record``; eagerly
    where a graph cannot capture). ``extra['speedup']`` is torch's time over the kernel's, both
    timed the same way (``extra['speedup_timing']`` says which).
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
            # torch's default generator (not gen) so that CUDA graphs can capture its draws too
            theirs = lambda: torch_top_p_sample(logits, temperature, top_k, top_p)  # noqa: E731
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
            speed = _speedup(ms_t, ex_t, ms_o, ex_o)
            records.append(Record("triton one-pass", shape, str(dtype).replace("torch.", ""), nbytes, ms_o,
                                  gbps(nbytes, ms_o), None, {**ex_o, **speed}))
            if top_p_kernel is not None and top_k is None:
                yours = lambda: sample_top_p(logits, temperature, top_p, 7, kernel=top_p_kernel)  # noqa: E731
                if not bool(support.gather(-1, yours().view(B, 1)).all()):
                    raise AssertionError(f"your kernel drew a token outside the top-p set at V={V}, B={B}")
                ms_y, ex_y = time_for_record(yours)
                speed = _speedup(ms_t, ex_t, ms_y, ex_y)
                records.append(Record("your kernel", shape, str(dtype).replace("torch.", ""), nbytes, ms_y,
                                      gbps(nbytes, ms_y), None, {**ex_y, **speed}))
    if save and not runtime_is_sim():
        save_records(records, "sampling", run_meta())
    return records


def _speedup(ms_torch, ex_torch, ms_ours, ex_ours) -> dict:
    """torch's time over ours, both timed the same way: through a CUDA graph, or both eagerly
    when torch's sampler could not be captured."""
    if not ms_torch or not ms_ours:
        return {}
    if ex_torch.get("timing") != "graph":
        return {"speedup": ms_torch / ex_ours["eager_ms"], "speedup_timing": "eager, both"}
    return {"speedup": ms_torch / ms_ours, "speedup_timing": "graph, both"}


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
