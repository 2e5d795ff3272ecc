"""The fused split-K decode kernel in Numba CUDA, built per head dim, cache dtype and GQA group.

One block owns one KV head of one sequence (and up to ``G`` query heads that share it) and
one chunk of the sequence. It streams the chunk in tiles of ``TILE`` tokens, reading every
byte of K and V once, and keeps every intermediate on chip:

* **Wide loads.** K and V come in as 8-byte words (the host views the cache as ``int64``): four
  fp16 or two fp32 elements a load. A row of the tile is ``LANES`` consecutive threads, each
  taking every ``LANES``-th word, so a warp reads whole rows, coalesced. All the words of a
  tile are loaded into registers before any is used, with no branches in between: the whole
  tile is in flight at once.
* **fp16 without conversion instructions.** An fp16 value shifted into bits 28..13 of a 32-bit
  word, sign in bit 31, is an fp32 bit pattern for the same number times ``2**-112`` (normal
  and subnormal halves alike): two or three integer instructions per element, and the factor
  ``2**112`` is applied once per score and folded into each probability. (An fp16 inf or NaN
  in the cache is read as a large finite number: the cache is assumed finite.)
* **Scores.** Each thread multiplies its slice of a key row by the query (in registers, loaded
  once) and leaves the partial sum in shared memory; after one ``syncthreads`` one thread
  per (head, token) adds the ``LANES`` partials (rows padded by one: no bank conflicts).
* **Online softmax per row group.** The threads that load rows ``r, r + ROWS, ...`` keep their
  own running ``(m, l, acc)`` over exactly those tokens, so a tile needs no block-wide max:
  after the second ``syncthreads`` each thread reads its tokens' scores and folds its V slice
  in. Two barriers per tile in all. At the end the ``ROWS`` row groups are merged through
  shared memory, exactly like split-K partials.
* **Split-K, merged by the last block.** With one split the block writes the output. With
  several it writes ``(acc, m, l)`` to a workspace, and the last block of its group to finish
  (an atomic counter, reset by that block for the next launch) merges all splits: one launch.

Scores are in the log2 domain (the host folds ``log2 e`` into ``scale``) so ``exp2`` does the
softmax. Everything runs unchanged in Numba's simulator: no warp shuffles or votes, and the
word unpacking (:mod:`labkit.attention.numba_words`) has a NumPy bit cast there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from numba import cuda, float32, int32, int64, uint64

from labkit import runtime
from labkit.attention.numba_words import HALF_SCALE, _unpack_float, _unpack_half

U = uint64  # array indices: see split_kernel
M_INIT = -3.4028234663852886e38  # the running max before any token: finite, so exp2(M_INIT - M_INIT) = 1


@dataclass(frozen=True)
class KernelConfig:
    """Compile-time shape of the split kernel (the host side plans launches from it)."""

    tile: int  # tokens per tile (two syncthreads each); a multiple of the rows a block loads at once
    threads: int  # threads per block
    lanes: int = 32  # at most this many threads share a row (fewer when a row has fewer 8-byte words)
    max_group: int = 4  # query heads one block serves from one read of K and V
    blocks_per_sm: int = 8  # how many blocks per SM the split heuristic aims for
    min_tiles: int = 2  # fewest tiles a split walks (shorter: partials cost more than they save)
    max_registers: int | None = None  # per thread, a cap for the compiler (more resident blocks)
    resident_per_sm: int = 4  # blocks of this shape one SM runs at once (registers and threads decide)


def layout(D: int, half: bool, cfg: KernelConfig) -> dict:
    """How a block of ``cfg`` covers a ``[tile, D]`` tile: words per row, lanes, rows, steps."""
    per = 4 if half else 2  # elements per 8-byte word
    words = D // per
    lanes = min(cfg.lanes, words)
    rows = cfg.threads // lanes
    if D % (2 * per) or words % lanes or cfg.threads % lanes or cfg.tile % rows:
        raise ValueError(f"config {cfg} does not tile D={D} ({'fp16' if half else 'fp32'})")
    return dict(per=per, words=words, lanes=lanes, wpt=words // lanes, rows=rows, steps=cfg.tile // rows)


def make_split_kernel(D: int, G: int, half: bool, cfg: KernelConfig, clamp: bool = False):
    """The split kernel for head dim ``D``, ``G`` query heads per block, an fp16 (``half``) or fp32 cache.

    ``kernel(q, k, v, out, ws, counters, scale, T, Hkv, group, chunk)`` on a grid
    ``(B * Hkv * group // G, splits)`` of ``cfg.threads`` threads. q, out: [B * Hq * D] flat
    (fp16 or fp32); k, v: [B * Hkv * T * D * itemsize / 8] int64 (the cache's bytes); ws:
    float32, ``B * Hq * splits * (D + 2)`` at least; counters: int32, one per grid column,
    zero. scale: softmax scale times log2 e. chunk: tokens per split, a multiple of the tile.
    ``clamp``: the variant for T < tile, whose tile rows past the end re-read the last row.
    """
    lay = layout(D, half, cfg)
    PER, WORDS, LANES, WPT, ROWS, STEPS = (lay[n] for n in ("per", "words", "lanes", "wpt", "rows", "steps"))
    TILE, TPB, EL = cfg.tile, cfg.threads, lay["wpt"] * lay["per"]  # EL: head dims one thread owns
    PADL = LANES + 1  # a padded row of partials: the reducing threads hit different banks
    RED = -(-G * TILE // TPB)  # scores each thread reduces, at most
    OWN = -(-G * D // TPB)  # output elements each thread merges, at most
    BUF = max(G * TILE * PADL, G * ROWS * D)  # the partials, then the row groups' accumulators
    CLAMP = clamp
    NS, NML = G * TILE, G * ROWS * 2  # scores of a tile; (m, l) of each row group
    SCALE = float32(HALF_SCALE if half else 1.0)
    unpack = _unpack_half if half else _unpack_float
    use_cap = cfg.max_registers and not runtime.is_sim()  # the simulator's jit takes no register cap
    jit = cuda.jit(max_registers=cfg.max_registers) if use_cap else cuda.jit

    @jit
    def split_kernel(q, k, v, out, ws, counters, scale, T, Hkv, group, chunk):
        # Array indices are cast to uint64: Numba then drops its negative-index wraparound, and
        # the offsets within a tile fold into the load instructions.
        tid = cuda.threadIdx.x
        lane = tid % LANES
        row = tid // LANES
        per_kv = group // G
        bh = cuda.blockIdx.x // per_kv  # b * Hkv + hk
        qrow = (bh // Hkv) * Hkv * group + (bh % Hkv) * group + (cuda.blockIdx.x % per_kv) * G  # b * Hq + h0
        split = cuda.blockIdx.y
        S = cuda.gridDim.y
        start = split * chunk
        end = min(start + chunk, T)

        buf = cuda.shared.array(BUF, float32)  # partials [G, TILE, PADL]; at the end accumulators [G, ROWS, D]
        s_sh = cuda.shared.array(NS, float32)  # the tile's scores [G, TILE]
        ml_sh = cuda.shared.array(NML, float32)  # each row group's (m, l) at the end [G, ROWS, 2]
        last_sh = cuda.shared.array(1, int32)
        qr = cuda.local.array((G, EL), float32)  # the query slice this thread needs, scaled
        acc = cuda.local.array((G, EL), float32)  # Σ exp2(s - m)·v over this row group's tokens
        m = cuda.local.array(G, float32)
        l = cuda.local.array(G, float32)
        kw = cuda.local.array((STEPS, WPT), int64)  # this thread's words of the K tile, in flight
        vw = cuda.local.array((STEPS, WPT), int64)  # and of the V tile
        f = cuda.local.array(PER, float32)  # one word, unpacked
        part = cuda.local.array(G, float32)
        p = cuda.local.array(G, float32)

        for gg in range(G):
            m[gg] = M_INIT
            l[gg] = 0.0
            for j in range(WPT):
                for e in range(PER):
                    qr[gg, j * PER + e] = float32(q[U((qrow + gg) * D + (lane + j * LANES) * PER + e)]) * scale
                    acc[gg, j * PER + e] = 0.0
        kbase = bh * T * WORDS + lane
        pbase = U(row * PADL + lane)

        for t0 in range(start, end, TILE):
            # 1. The whole tile into registers, no branches. The last tile of a split is moved back
            #    to end at `end` (its rows before t0 are masked in step 3), so every row is in the
            #    cache and the offsets are constants from one address. (T < TILE: rows are clamped.)
            tb = t0 if CLAMP else min(t0, end - TILE)
            first = kbase + (tb if CLAMP else tb + row) * WORDS
            kt = k[U(first):]
            vt = v[U(first):]
            for i in range(STEPS):
                off = U(min(row + i * ROWS, end - 1 - tb) * WORDS) if CLAMP else U(i * ROWS * WORDS)
                for j in range(WPT):
                    kw[i, j] = kt[off + U(j * LANES)]
                    vw[i, j] = vt[off + U(j * LANES)]
            for i in range(STEPS):  # 2. partial dot products of this thread's slice of each row
                for gg in range(G):
                    part[gg] = 0.0
                for j in range(WPT):
                    unpack(kw[i, j], f)
                    for e in range(PER):
                        for gg in range(G):
                            part[gg] += qr[gg, j * PER + e] * f[e]
                for gg in range(G):
                    buf[pbase + U((gg * TILE + i * ROWS) * PADL)] = part[gg]
            cuda.syncthreads()
            for r in range(RED):  # 3. one thread per (head, token) adds the partials
                idx = tid + r * TPB
                if idx < G * TILE:
                    s = float32(0.0)
                    for u in range(LANES):
                        s += buf[U(idx * PADL + u)]
                    tok = tb + idx % TILE
                    s_sh[U(idx)] = s * SCALE if t0 <= tok < end else -math.inf
            cuda.syncthreads()
            for gg in range(G):  # 4. online softmax over this row group's tokens of the tile
                m_new = m[gg]
                for i in range(STEPS):
                    m_new = max(m_new, s_sh[U(gg * TILE + row + i * ROWS)])
                alpha = math.exp2(m[gg] - m_new)
                l[gg] *= alpha
                for e in range(EL):
                    acc[gg, e] *= alpha
                m[gg] = m_new
            for i in range(STEPS):
                for gg in range(G):
                    pi = math.exp2(s_sh[U(gg * TILE + row + i * ROWS)] - m[gg])
                    l[gg] += pi
                    p[gg] = pi * SCALE
                for j in range(WPT):
                    unpack(vw[i, j], f)
                    for e in range(PER):
                        for gg in range(G):
                            acc[gg, j * PER + e] += p[gg] * f[e]

        # 5. Merge the row groups: the block's (m, l, acc) per query head.
        for gg in range(G):
            if lane == 0:
                ml_sh[U((gg * ROWS + row) * 2)] = m[gg]
                ml_sh[U((gg * ROWS + row) * 2 + 1)] = l[gg]
            for j in range(WPT):
                for e in range(PER):
                    buf[U((gg * ROWS + row) * D + (lane + j * LANES) * PER + e)] = acc[gg, j * PER + e]
        cuda.syncthreads()
        for r in range(OWN):
            idx = tid + r * TPB
            if idx < G * D:
                gg = idx // D
                mx = float32(M_INIT)
                for u in range(ROWS):
                    mx = max(mx, ml_sh[U((gg * ROWS + u) * 2)])
                den = float32(0.0)
                num = float32(0.0)
                for u in range(ROWS):
                    w = math.exp2(ml_sh[U((gg * ROWS + u) * 2)] - mx)
                    den += w * ml_sh[U((gg * ROWS + u) * 2 + 1)]
                    num += w * buf[U((gg * ROWS + u) * D + idx % D)]
                if S == 1:
                    out[U(qrow * D + idx)] = num / den
                else:
                    base = ((qrow + gg) * S + split) * (D + 2)
                    ws[U(base + idx % D)] = num
                    if idx % D == 0:
                        ws[U(base + D)] = mx
                        ws[U(base + D + 1)] = den
        if S == 1:
            return

        # 6. Several splits: the last block of this group to finish merges them all.
        cuda.threadfence()  # this block's partials are visible before the counter says so
        cuda.syncthreads()
        if tid == 0:
            done = cuda.atomic.add(counters, cuda.blockIdx.x, 1)
            last_sh[0] = 1 if done == S - 1 else 0
            if done == S - 1:
                counters[cuda.blockIdx.x] = 0  # ready for the next launch (and graph replay)
        cuda.syncthreads()
        if last_sh[0] == 0:
            return
        cuda.threadfence()  # and the other blocks' partials are visible to this one
        for r in range(OWN):
            idx = tid + r * TPB
            if idx < G * D:
                # One online pass over the splits, two per step: each step's six loads are issued
                # together, so the merge waits on S / 2 memory round trips, not 2 S.
                base = (qrow + idx // D) * S * (D + 2)
                mx = float32(M_INIT)
                den = float32(0.0)
                num = float32(0.0)
                for s in range(0, S, 2):
                    a = base + s * (D + 2)
                    b = a + (D + 2) if s + 1 < S else a  # an odd S reads the last split twice...
                    ma, la, va = ws[U(a + D)], ws[U(a + D + 1)], ws[U(a + idx % D)]
                    mb, lb, vb = ws[U(b + D)], ws[U(b + D + 1)], ws[U(b + idx % D)]
                    if s + 1 >= S:
                        lb, vb = float32(0.0), float32(0.0)  # ...and gives the copy no weight
                    m_new = max(mx, max(ma, mb))
                    c, wa, wb = math.exp2(mx - m_new), math.exp2(ma - m_new), math.exp2(mb - m_new)
                    den = den * c + wa * la + wb * lb
                    num = num * c + wa * va + wb * vb
                    mx = m_new
                out[U(qrow * D + idx)] = num / den

    return split_kernel
