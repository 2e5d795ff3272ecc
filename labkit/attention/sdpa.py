"""PyTorch's ``scaled_dot_product_attention``: the honest baseline every kernel is reported beside,
and the path for passes of several queries per sequence (prefill, chunked prefill, speculative
verification), which decode kernels do not serve."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from labkit.attention.validate import validate_decode


def sdpa_decode(q, k, v, *, scale: float | None = None, expand_kv: bool = True) -> torch.Tensor:
    """Decode attention through SDPA. q: [B, Hq, D]; k, v: [B, Hkv, T, D]; returns [B, Hq, D].

    No causal mask: with one query, ``is_causal=True`` aligns top-left and attends to key 0
    only. With GQA, ``expand_kv`` repeats KV heads so SDPA keeps its fast kernels (it falls
    back to the math path otherwise); the expansion's copy is part of what SDPA costs.
    """
    B, Hq, Hkv, T, D = validate_decode(q, k, v)
    if Hq != Hkv and expand_kv:
        return masked_attention(q.unsqueeze(2), k, v, None, scale=scale).squeeze(2)
    return F.scaled_dot_product_attention(q.unsqueeze(2), k, v, scale=scale, enable_gqa=Hq != Hkv).squeeze(2)


def causal_attention(q, k, v, *, dropout_p: float = 0.0) -> torch.Tensor:
    """Causal self-attention over a whole sequence (training, and the uncached forward pass
    the cached paths are tested against), through SDPA's fused kernels.

    q: [B, Hq, S, D]; k, v: [B, Hkv, S, D], Hq a multiple of Hkv (SDPA groups the heads
    itself: without a mask its flash and cuDNN kernels take GQA natively). Returns
    [B, Hq, S, D] in q's dtype.
    """
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p,
                                          enable_gqa=q.shape[1] != k.shape[1])


def masked_attention(q, k, v, mask=None, *, scale: float | None = None) -> torch.Tensor:
    """Attention of ``S`` queries per sequence under a mask, through SDPA.

    q: [B, Hq, S, D]; k, v: [B, Hkv, T, D] with Hq a multiple of Hkv; mask: broadcastable to
    [B, Hq, S, T], either bool (True where a query may see a key) or additive in q's dtype
    (0 or -inf; the caches build it once a pass rather than have SDPA convert a bool mask in
    every layer), or None. Returns [B, Hq, S, D] in q's dtype. The caches' multi-token passes
    (prefill, chunked prefill, speculative verification) come here, so one function owns how
    several queries attend to a cache. With GQA the KV heads are repeated: SDPA's fused kernels
    need equal head counts under a mask.
    """
    Hq, Hkv = q.shape[1], k.shape[1]
    if Hq != Hkv:
        k = k.repeat_interleave(Hq // Hkv, dim=1)
        v = v.repeat_interleave(Hq // Hkv, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
