"""A transformer layer in three Triton kernels, and the output head with greedy acceptance in one.

At batch 1 a small model is launch-bound: its cost is the number of kernels it launches, not
their work (see :mod:`labkit.decoding.engine`). These kernels cut a layer from about ten
launches to three, each computing every row of a pass of ``S ≤ BLOCK_S`` new tokens from one
read of its weights, so verifying γ + 1 tokens costs what decoding one does:

1. :func:`_attention_block_kernel`, one program per head: norm, this head's q/k/v, RoPE, the
   new keys and values into the cache, causal attention over the cache by position.
2. :func:`_mlp_up_kernel`, one program per ``BLOCK_F`` hidden units: the attention output
   projection and residual add (every program recomputes it: 128 KB of L2 reads beats a
   launch), the second norm, ``gelu(x W_fc^T)``.
3. :func:`_mlp_down_kernel`, one program per ``BLOCK_N`` model dims: ``x += u W_proj^T``.

:func:`_head_kernel` then normalises, computes the logits and their argmax, and writes the
next token into the token buffer itself; when verifying a speculative round it also compares
the target's argmaxes with the draft's tokens and advances the length by the accepted count,
so a whole decode round runs with no host work and no PyTorch op between kernels.

Rows past ``S`` (``tl.dot`` needs 16) repeat row 0's position and are never stored. Every
program of the first layer reads the embedding itself; the residual stream lives in two
``[BLOCK_S, d]`` buffers so no kernel reads what another program of it writes.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _xwt(x, W, row0, N: tl.constexpr, K: tl.constexpr):
    """x [BLOCK_S, K] (W's dtype) times rows row0 .. row0+N-1 of W [*, K], transposed: fp32 [BLOCK_S, N]."""
    n = tl.arange(0, N)
    k = tl.arange(0, K)
    w = tl.load(W + (row0 + n)[None, :] * K + k[:, None])  # [K, N]: W's rows as columns
    return tl.dot(x, w, input_precision="ieee")


@triton.jit
def _normalize(x, NormW, NormB, eps, DM: tl.constexpr, RMS: tl.constexpr, NORM_BIAS: tl.constexpr):
    """LayerNorm (RMSNorm if RMS) of fp32 rows x [BLOCK_S, DM]."""
    cols = tl.arange(0, DM)
    if RMS:
        xc = x
    else:
        xc = x - (tl.sum(x, axis=1) / DM)[:, None]
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / DM + eps)
    y = xc * rstd[:, None] * tl.load(NormW + cols).to(tl.float32)[None, :]
    if NORM_BIAS:
        y += tl.load(NormB + cols).to(tl.float32)[None, :]
    return y


@triton.jit
def _attention_block_kernel(
    X,  # [BLOCK_S, DM] residual stream (FIRST: written here from the embedding by program 0)
    Seq,  # [max_len] int64 tokens; the pass feeds Seq[p0 .. p0 + S - 1]
    N,  # [] int64 tokens so far; the pass starts at position p0 = N + offset
    Embed,  # [V, DM] token embedding (read only if FIRST)
    NormW, NormB,  # [DM] the layer's first norm (NormB read only if NORM_BIAS)
    Wqkv,  # [3·H·D, DM] projection: H query heads, then H key heads, then H value heads
    Cos, Sin,  # [max_len, D/2] fp32 RoPE tables (rotate-half)
    KV,  # [T, 2, H, D] this layer's cache, token-major: K at [t, 0], V at [t, 1]
    O,  # [BLOCK_S, H·D] attention output, heads side by side
    offset,  # p0 - N
    S,  # tokens in the pass, 1 ≤ S ≤ BLOCK_S
    qk_scale,  # softmax scale × log2(e)
    eps,  # the norm's epsilon
    H: tl.constexpr, D: tl.constexpr, DM: tl.constexpr,  # heads, head dim, model dim (powers of two)
    BLOCK_S: tl.constexpr,  # rows of every tile: S padded to tl.dot's 16
    BLOCK_T: tl.constexpr,  # cache slots per attention tile
    FIRST: tl.constexpr, RMS: tl.constexpr, NORM_BIAS: tl.constexpr,
):
    h = tl.program_id(0)  # one head per program
    HALF: tl.constexpr = D // 2
    rows = tl.arange(0, BLOCK_S)
    live = rows < S
    p0 = tl.load(N) + offset
    pos = p0 + tl.where(live, rows, 0)  # padding rows repeat row 0: finite, never stored
    cols = tl.arange(0, DM)
    half = tl.arange(0, HALF)
    dims = tl.arange(0, D)

    # 1. The pass's rows of the residual stream, then the norm.
    if FIRST:
        tok = tl.load(Seq + pos)
        x = tl.load(Embed + tok[:, None] * DM + cols[None, :]).to(tl.float32)
        if h == 0:
            tl.store(X + rows[:, None] * DM + cols[None, :], x.to(X.dtype.element_ty), mask=live[:, None])
    else:
        x = tl.load(X + rows[:, None] * DM + cols[None, :], mask=live[:, None], other=0.0).to(tl.float32)
    xn = _normalize(x, NormW, NormB, eps, DM, RMS, NORM_BIAS).to(Wqkv.dtype.element_ty)

    # 2. This head's q, k and v in halves: rotate-half pairs element i with i + D/2, and a
    #    [DM, D/2] weight tile keeps tl.dot's staged operands within the T4's shared memory.
    q_lo = _xwt(xn, Wqkv, h * D, HALF, DM)
    q_hi = _xwt(xn, Wqkv, h * D + HALF, HALF, DM)
    k_lo = _xwt(xn, Wqkv, (H + h) * D, HALF, DM)
    k_hi = _xwt(xn, Wqkv, (H + h) * D + HALF, HALF, DM)
    v_lo = _xwt(xn, Wqkv, (2 * H + h) * D, HALF, DM)
    v_hi = _xwt(xn, Wqkv, (2 * H + h) * D + HALF, HALF, DM)
    cos = tl.load(Cos + pos[:, None] * HALF + half[None, :])
    sin = tl.load(Sin + pos[:, None] * HALF + half[None, :])
    q_lo, q_hi = q_lo * cos - q_hi * sin, q_hi * cos + q_lo * sin
    k_lo, k_hi = k_lo * cos - k_hi * sin, k_hi * cos + k_lo * sin

    # 3. The new keys and values into the cache at their positions; the barrier makes every
    #    thread's stores visible to the whole program before it reads the cache back.
    dtype = KV.dtype.element_ty
    slot = pos.to(tl.int64)[:, None] * (2 * H * D) + h * D
    tl.store(KV + slot + half[None, :], k_lo.to(dtype), mask=live[:, None])
    tl.store(KV + slot + HALF + half[None, :], k_hi.to(dtype), mask=live[:, None])
    tl.store(KV + slot + H * D + half[None, :], v_lo.to(dtype), mask=live[:, None])
    tl.store(KV + slot + H * D + HALF + half[None, :], v_hi.to(dtype), mask=live[:, None])
    tl.debug_barrier()

    # 4. Causal attention by position: row s sees slots 0 .. pos[s]. Stale slots past the
    #    pass (a rejected draft's) are masked, so rolling back costs nothing.
    q_lo = q_lo.to(dtype)
    q_hi = q_hi.to(dtype)
    m = tl.full([BLOCK_S], float("-inf"), dtype=tl.float32)
    l = tl.zeros([BLOCK_S], dtype=tl.float32)
    acc = tl.zeros([BLOCK_S, D], dtype=tl.float32)
    end = p0 + S
    for start in range(0, end, BLOCK_T):
        t = start + tl.arange(0, BLOCK_T)
        key = t.to(tl.int64)[:, None] * (2 * H * D) + h * D
        in_range = (t < end)[:, None]
        kl = tl.load(KV + key + half[None, :], mask=in_range, other=0.0)
        kh = tl.load(KV + key + HALF + half[None, :], mask=in_range, other=0.0)
        vv = tl.load(KV + key + H * D + dims[None, :], mask=in_range, other=0.0)
        s = (tl.dot(q_lo, tl.trans(kl), input_precision="ieee")
             + tl.dot(q_hi, tl.trans(kh), input_precision="ieee")) * qk_scale
        s = tl.where(t[None, :] <= pos[:, None], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(dtype), vv, input_precision="ieee")
        m = m_new
    out = acc / l[:, None]
    tl.store(O + rows[:, None] * (H * D) + h * D + dims[None, :], out.to(O.dtype.element_ty), mask=live[:, None])


@triton.jit
def _mlp_up_kernel(
    X,  # [BLOCK_S, DM] residual stream before attention
    O,  # [BLOCK_S, DM] attention output
    X2,  # [BLOCK_S, DM] residual stream after attention (written by program 0)
    U,  # [BLOCK_S, F] the MLP's hidden activations
    Wproj,  # [DM, DM] attention output projection
    NormW, NormB,  # [DM] the layer's second norm
    Wfc,  # [F, DM] MLP up projection
    S,  # tokens in the pass
    eps,
    DM: tl.constexpr, F: tl.constexpr,  # model dim, hidden units
    BLOCK_S: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr,
    RMS: tl.constexpr, NORM_BIAS: tl.constexpr,
):
    pid = tl.program_id(0)  # which BLOCK_F hidden units
    rows = tl.arange(0, BLOCK_S)
    live = rows < S
    cols = tl.arange(0, DM)

    # 1. x2 = x + o Wproj^T, over K chunks so the weight tile stays small.
    x2 = tl.load(X + rows[:, None] * DM + cols[None, :], mask=live[:, None], other=0.0).to(tl.float32)
    for k0 in range(0, DM, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        o = tl.load(O + rows[:, None] * DM + kk[None, :], mask=live[:, None], other=0.0)
        w = tl.load(Wproj + cols[None, :] * DM + kk[:, None])  # [BLOCK_K, DM] = Wproj[:, kk]^T
        x2 += tl.dot(o, w, input_precision="ieee")
    if pid == 0:
        tl.store(X2 + rows[:, None] * DM + cols[None, :], x2.to(X2.dtype.element_ty), mask=live[:, None])

    # 2. u = gelu_tanh(norm(x2) Wfc^T) for this program's hidden units.
    xn = _normalize(x2, NormW, NormB, eps, DM, RMS, NORM_BIAS).to(Wfc.dtype.element_ty)
    f0 = pid * BLOCK_F
    y = _xwt(xn, Wfc, f0, BLOCK_F, DM)
    inner = 0.7978845608028654 * (y + 0.044715 * y * y * y)  # sqrt(2/pi)·(y + 0.044715 y³)
    u = 0.5 * y * (2.0 - 2.0 / (1.0 + tl.exp(2.0 * inner)))  # 1 + tanh(inner), overflow-safe
    tl.store(U + rows[:, None] * F + f0 + tl.arange(0, BLOCK_F)[None, :], u.to(U.dtype.element_ty),
             mask=live[:, None])


@triton.jit
def _mlp_down_kernel(
    X2,  # [BLOCK_S, DM] residual stream after attention
    U,  # [BLOCK_S, F] hidden activations
    Wproj,  # [DM, F] MLP down projection
    X,  # [BLOCK_S, DM] residual stream out (the next layer's input)
    S,  # tokens in the pass
    F: tl.constexpr, DM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)  # which BLOCK_N model dims
    rows = tl.arange(0, BLOCK_S)
    live = rows < S
    n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.load(X2 + rows[:, None] * DM + n[None, :], mask=live[:, None], other=0.0).to(tl.float32)
    for k0 in range(0, F, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        u = tl.load(U + rows[:, None] * F + kk[None, :], mask=live[:, None], other=0.0)
        w = tl.load(Wproj + n[None, :] * F + kk[:, None])  # [BLOCK_K, BLOCK_N]
        acc += tl.dot(u, w, input_precision="ieee")
    tl.store(X + rows[:, None] * DM + n[None, :], acc.to(X.dtype.element_ty), mask=live[:, None])


@triton.jit
def _head_kernel(
    X,  # [BLOCK_S, DM] final residual stream
    NormW, NormB,  # [DM] final norm
    Head,  # [V, DM] output head (the embedding when tied)
    Logits,  # [BLOCK_S, V] fp32 logits out
    Seq,  # [max_len] int64 tokens: the argmaxes are written here
    N,  # [] int64 tokens so far (advanced here if ADVANCE or VERIFY)
    Counts,  # [BLOCK_S + 1] int64: rounds that yielded k tokens (VERIFY only)
    offset, S, V,  # p0 - N, tokens in the pass, vocabulary size
    eps,
    DM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_V: tl.constexpr, RMS: tl.constexpr, NORM_BIAS: tl.constexpr,
    ADVANCE: tl.constexpr,  # plain decoding: Seq[p0 + S] = argmax of the last row, N += 1
    VERIFY: tl.constexpr,  # a speculative round's target pass: accept the draft's longest agreeing prefix
):
    rows = tl.arange(0, BLOCK_S)
    live = rows < S
    cols = tl.arange(0, DM)
    x = tl.load(X + rows[:, None] * DM + cols[None, :], mask=live[:, None], other=0.0).to(tl.float32)
    xn = _normalize(x, NormW, NormB, eps, DM, RMS, NORM_BIAS).to(Head.dtype.element_ty)

    # 1. Logits chunk by chunk, keeping each row's running argmax (the first on ties, as torch).
    best = tl.zeros([BLOCK_S], dtype=tl.int32)
    best_val = tl.full([BLOCK_S], float("-inf"), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        vocab = v0 + tl.arange(0, BLOCK_V)
        w = tl.load(Head + vocab[None, :] * DM + cols[:, None], mask=(vocab < V)[None, :], other=0.0)
        logits = tl.dot(xn, w, input_precision="ieee")
        logits = tl.where((vocab < V)[None, :], logits, float("-inf"))
        tl.store(Logits + rows[:, None] * V + vocab[None, :], logits, mask=live[:, None] & (vocab < V)[None, :])
        top = tl.max(logits, axis=1)
        arg = tl.argmax(logits, axis=1) + v0
        better = top > best_val
        best = tl.where(better, arg, best)
        best_val = tl.where(better, top, best_val)

    # 2. Row s predicts position p0 + s + 1.
    n0 = tl.load(N)
    p0 = n0 + offset
    if VERIFY:
        # Seq[p0 + 1 .. p0 + S - 1] hold the draft's tokens; keep the target's argmaxes up to and
        # including the first disagreement (all S when every draft token agrees: the bonus token).
        drafted = rows < S - 1
        draft = tl.load(Seq + p0 + 1 + rows, mask=drafted, other=-1)
        first_miss = tl.min(tl.where(drafted & (best != draft), rows, S - 1), axis=0)
        tl.debug_barrier()  # every thread has read the draft before any overwrites it
        tl.store(Seq + p0 + 1 + rows, best, mask=live)
        tl.store(N, n0 + first_miss + 1)
        tl.store(Counts + first_miss + 1, tl.load(Counts + first_miss + 1) + 1)
    else:
        last = tl.sum(tl.where(rows == S - 1, best, 0), axis=0)
        tl.store(Seq + p0 + S, last)
        if ADVANCE:
            tl.store(N, n0 + 1)


__all__ = ["_attention_block_kernel", "_head_kernel", "_mlp_down_kernel", "_mlp_up_kernel"]
