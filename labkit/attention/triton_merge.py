"""Flash-decoding's second kernel: the partials of a sequence's KV chunks merged by log-sum-exp.

Chunk ``i`` of a (sequence, query head) left its running max ``m_i`` (log2 domain), its sum of
exponentials ``l_i`` and its unnormalised output ``acc_i``, each relative to its own max. The
merge rescales every chunk to the global max and adds, exactly (the online softmax's rescaling,
done once across chunks):

    M = max_i m_i,   out = Σ_i 2^(m_i − M)·acc_i / Σ_i 2^(m_i − M)·l_i

:func:`labkit.attention.triton_decode.launch` runs it after the split kernel; notebook 03's
exercise 03.merge writes the same kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _merge_kernel(
    Mws, Lws,  # [B·Hq, num_splits] fp32 partial max (log2 domain) and sum of exponentials
    Accws,  # [B·Hq, num_splits, D] fp32 partial unnormalised outputs
    Out,  # [B·Hq, D] the output, q's dtype
    num_splits,  # partials per row
    HEAD_DIM: tl.constexpr,  # D, a power of two
    SPLITS_P: tl.constexpr,  # num_splits rounded up to a power of two
):
    row = tl.program_id(0).to(tl.int64)  # one (sequence, query head) per program
    offs_s = tl.arange(0, SPLITS_P)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_s = offs_s < num_splits
    # A chunk with no valid tokens left m = -inf, l = 0, acc = 0: its weight below is 0.
    m = tl.load(Mws + row * num_splits + offs_s, mask=mask_s, other=float("-inf"))
    l = tl.load(Lws + row * num_splits + offs_s, mask=mask_s, other=0.0)
    acc = tl.load(Accws + (row * num_splits + offs_s[:, None]) * HEAD_DIM + offs_d[None, :],
                  mask=mask_s[:, None], other=0.0)
    m_all = tl.max(m, axis=0)  # chunk 0 always holds a token, so this is finite
    w = tl.exp2(m - m_all)  # each chunk's weight relative to the global max
    out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
    tl.store(Out + row * HEAD_DIM + offs_d, out.to(Out.dtype.element_ty), mask=offs_d < HEAD_DIM)


def merge_splits(ws, out, num_splits: int, rows: int, head_dim: int) -> None:
    """Launch the merge: ``ws`` = (M, L, Acc) workspaces of the split kernel; ``rows`` = B·Hq rows of ``out``."""
    _merge_kernel[(rows,)](*ws, out, num_splits, HEAD_DIM=head_dim, SPLITS_P=triton.next_power_of_2(num_splits),
                           num_warps=4)


__all__ = ["_merge_kernel", "merge_splits"]
