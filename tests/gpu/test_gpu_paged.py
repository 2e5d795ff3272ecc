"""The paged KV cache on a GPU (pytest -m gpu): the paged kernel and the cache protocol.

``paged_decode`` == the float64 reference over random shapes (ragged lengths, shuffled block
tables, GQA, fp16/fp32/bf16, block sizes 8-64, forced split counts), and PagedBatch ==
ContiguousKVCache through the model's cache protocol (prefill, decode steps, forks with
copy-on-write, truncation). Counts and seed as the GPU script that passed on the H200.
"""

from __future__ import annotations

import random

import labkit  # noqa: F401  (decides the mode before numba and triton load)
import torch

from labkit import runtime
from labkit.bench.paged import BLOCK_SIZES, reference_on_device
from labkit.attention import reference_decode
from labkit.attention.validate import supported_dtypes
from labkit.checks.core import TOLERANCE, rel_error
from labkit.kvcache import ContiguousKVCache, PagedBatch, PagedKVCache
from labkit.kvcache.paged_attention import gather_paged, paged_decode

DEV = runtime.device()


def check_kernel(rng: random.Random, n: int, max_len: int = 5000) -> list[str]:
    """paged_decode against the float64 reference on ``n`` random ragged, shuffled problems."""
    failures = []
    dtypes = supported_dtypes()
    for i in range(n):
        B, Hkv, group = rng.randint(1, 8), rng.choice([1, 2, 4, 8]), rng.choice([1, 2, 4, 8])
        D, bs, dtype = rng.choice([64, 128]), rng.choice(BLOCK_SIZES), rng.choice(dtypes)
        lengths = [rng.choice([1, rng.randint(1, bs), rng.randint(1, max_len)]) for _ in range(B)]
        width = max(-(-n // bs) for n in lengths) + rng.randint(0, 3)  # tables wider than needed too
        num_blocks = B * width + rng.randint(0, 16)
        k_pool = torch.randn(num_blocks, Hkv, bs, D, device=DEV).to(dtype)
        v_pool = torch.randn(num_blocks, Hkv, bs, D, device=DEV).to(dtype)
        tables = torch.randperm(num_blocks, device=DEV)[: B * width].view(B, width).int()
        lens = torch.tensor(lengths, dtype=torch.int32, device=DEV)
        q = torch.randn(B, Hkv * group, D, device=DEV).to(dtype)
        splits = rng.choice([None, 1, 3, 17])
        out = torch.full_like(q, float("nan"))
        paged_decode(q, k_pool, v_pool, tables, lens, out=out, num_splits=splits)
        k, v = gather_paged(k_pool, tables, lens), gather_paged(v_pool, tables, lens)
        err = rel_error(out, reference_on_device(q, k, v, lens))
        what = f"B={B} Hq={Hkv * group} Hkv={Hkv} D={D} bs={bs} {dtype} lengths={lengths} splits={splits}"
        if not err <= TOLERANCE[dtype]:
            failures.append(f"paged_decode {what}: relative error {err:.3g}")
    return failures


def check_protocol(rng: random.Random, n: int, max_prefill: int = 100) -> list[str]:
    """PagedBatch against ContiguousKVCache: the same passes must give the same attention."""
    failures = []
    for i in range(n):
        L, B, Hkv, group, D = 2, rng.randint(1, 4), rng.choice([2, 4]), rng.choice([1, 4]), 64
        bs, dtype = rng.choice(BLOCK_SIZES), rng.choice([torch.float16, torch.float32])
        contiguous = ContiguousKVCache(L, B, Hkv, D, 512, dtype=dtype, device=DEV)
        cache = PagedKVCache(L, Hkv, D, num_blocks=B * (512 // bs), block_size=bs, dtype=dtype, device=DEV)
        paged = PagedBatch(cache, [cache.new_sequence() for _ in range(B)])
        for S in [rng.randint(2, max_prefill)] + [1] * 6 + [rng.randint(2, 9)] + [1] * 3:
            contiguous.begin(S), paged.begin(S)
            for layer in range(L):
                k, v = (torch.randn(B, Hkv, S, D, device=DEV).to(dtype) for _ in range(2))
                q = torch.randn(B, Hkv * group, S, D, device=DEV).to(dtype)
                contiguous.append(layer, k, v), paged.append(layer, k, v)
                err = rel_error(paged.attend(layer, q), contiguous.attend(layer, q))
                if not err <= 2 * TOLERANCE[dtype]:
                    failures.append(f"PagedBatch B={B} Hkv={Hkv} group={group} bs={bs} {dtype} S={S}: rel error {err:.3g}")
            contiguous.commit(), paged.commit()
        cache.check_invariants()
        # Fork every row, then give parent and child different next tokens: each must see its
        # own, so the shared, partly filled last block has to be copied (copy-on-write).
        prefix = [cache.gather(0, s) for s in paged.seqs]
        children = [cache.fork(s) for s in paged.seqs]
        both = PagedBatch(cache, paged.seqs + children)
        both.begin(1)
        k, v = (torch.randn(2 * B, Hkv, 1, D, device=DEV).to(dtype) for _ in range(2))
        both.append(0, k, v)
        q = torch.randn(2 * B, Hkv * group, 1, D, device=DEV).to(dtype)
        out = both.attend(0, q)
        both.commit()
        for row, seq in enumerate(paged.seqs + children):
            kp, vp = prefix[row % B]
            want_k, want_v = torch.cat([kp, k[row]], dim=1), torch.cat([vp, v[row]], dim=1)  # [Hkv, T + 1, D]
            got_k, got_v = cache.gather(0, seq)
            if not (torch.equal(got_k, want_k) and torch.equal(got_v, want_v)):
                failures.append(f"fork: row {row} bs={bs} does not hold its own tokens (copy-on-write broken)")
            err = rel_error(out[row:row + 1, :, 0], reference_decode(q[row:row + 1, :, 0], want_k[None], want_v[None]))
            if not err <= 2 * TOLERANCE[dtype]:
                failures.append(f"fork+decode row {row} bs={bs} {dtype}: rel error {err:.3g}")
        cache.check_invariants()
    return failures


def test_paged_kernel_and_cache_protocol():
    # The script's seed 0 and full counts, one generator through both checks, in its order.
    rng = random.Random(0)
    torch.manual_seed(0)
    failures = check_kernel(rng, 40)
    failures += check_protocol(rng, 8)
    assert failures == []
