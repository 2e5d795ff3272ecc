"""RoPE fusion on a GPU (pytest -m gpu): correctness over random shapes.

Against float64 references: ``rope_triton``; ``write_kv_rope`` into contiguous caches and
shuffled paged pools (fp16/fp32/bf16, even head dims 2 … 256 (80 and 96 too), positions up to
32k, rope on and off, strided views); ``flash_decode`` / ``triton_decode`` with
``rope=(cos, sin, positions)`` (GQA, ragged lengths, forced splits); the unfused and fused
decode steps. The same cases and counts as the GPU script that passed on the H200 (seed 0).
"""

from __future__ import annotations

import random

import labkit  # noqa: F401  (decides the mode before numba and triton load)
import torch

from labkit import runtime
from labkit.attention import reference_decode
from labkit.attention.triton_decode import flash_decode, triton_decode
from labkit.attention.validate import supported_dtypes
from labkit.checks.core import TOLERANCE, rel_error
from labkit.rope.write import write_kv_rope
from labkit.rope import apply_rope, rope_tables
from labkit.rope.fusion import fused_decode_step, reference_decode_step, unfused_decode_step
from labkit.rope.rotate import rope_triton

DEV = runtime.device()
MAX_LEN = 32768
HEAD_DIMS = (2, 16, 64, 80, 96, 128, 256)
HEADS = (1, 5, 8, 32, 40)


def rotated64(x, pos, cos, sin):
    return apply_rope(x.double().cpu(), pos.cpu().long(), cos.double().cpu(), sin.double().cpu())


def check_rope_triton(rng, n):
    failures = []
    for _ in range(n):
        N, H, D, dtype = rng.randint(1, 70), rng.choice(HEADS), rng.choice(HEAD_DIMS), rng.choice(supported_dtypes())
        cos, sin = rope_tables(MAX_LEN, D, device=DEV)
        x = torch.randn(N, H, D, device=DEV).to(dtype)
        pos = torch.randint(0, MAX_LEN, (N,), device=DEV)
        out = rope_triton(x, pos, cos, sin, out=torch.full_like(x, float("nan")))
        err = rel_error(out, rotated64(x, pos[:, None], cos, sin))
        if not err <= TOLERANCE[dtype]:
            failures.append(f"rope_triton N={N} H={H} D={D} {dtype}: relative error {err:.3g}")
    return failures


def check_write(rng, n):
    failures = []
    for _ in range(n):
        H, D, dtype = rng.choice(HEADS), rng.choice(HEAD_DIMS), rng.choice(supported_dtypes())
        rope, paged, strided = rng.random() < 0.8, rng.random() < 0.5, rng.random() < 0.3
        if paged:
            R, S = rng.randint(8, 300), rng.choice([8, 16, 32, 64])
            N = rng.randint(1, min(64, R * S))
            flat = torch.randperm(R * S, device=DEV)[:N]
            rows, slots = flat // S, (flat % S).int()
            pos = torch.randint(0, MAX_LEN, (N,), device=DEV)
        else:
            N, S = rng.randint(1, 16), rng.randint(1, 3000)
            R, rows = N, torch.arange(N, device=DEV)
            pos = slots = torch.randint(0, S, (N,), device=DEV, dtype=torch.int32)
        cos, sin = rope_tables(MAX_LEN, D, device=DEV)
        if strided:
            qkv = torch.randn(N, 3, H, D, device=DEV).to(dtype)
            k_new, v_new = qkv[:, 1], qkv[:, 2]
        else:
            k_new, v_new = (torch.randn(N, H, D, device=DEV).to(dtype) for _ in range(2))
        k_cache = torch.full((R, H, S, D), float("nan"), device=DEV, dtype=dtype)
        v_cache = torch.full_like(k_cache, float("nan"))
        write_kv_rope(k_new, v_new, k_cache, v_cache, rows, slots, (cos, sin, pos) if rope else None)
        want = rotated64(k_new, pos[:, None], cos, sin) if rope else k_new
        s = slots.long()
        err = max(rel_error(k_cache[rows, :, s], want), rel_error(v_cache[rows, :, s], v_new))
        written = int(torch.isfinite(k_cache).sum()) + int(torch.isfinite(v_cache).sum())
        what = f"write_kv_rope N={N} H={H} D={D} {dtype} paged={paged} rope={rope} strided={strided}"
        if not err <= TOLERANCE[dtype]:
            failures.append(f"{what}: relative error {err:.3g}")
        if written != 2 * N * H * D:
            failures.append(f"{what}: {written} cache elements written, expected {2 * N * H * D}")
    return failures


def check_attention(rng, n):
    failures = []
    for _ in range(n):
        (Hkv, group), D = rng.choice([(1, 4), (8, 1), (8, 4), (32, 1)]), rng.choice([64, 128])
        B = rng.randint(1, 8)
        dtype, T = rng.choice(supported_dtypes()), rng.randint(1, 5000)
        cos, sin = rope_tables(MAX_LEN, D, device=DEV)
        q = torch.randn(B, Hkv * group, D, device=DEV).to(dtype)
        k, v = (torch.randn(B, Hkv, T, D, device=DEV).to(dtype) for _ in range(2))
        lengths = torch.randint(1, T + 1, (B,), device=DEV, dtype=torch.int32)
        pos = torch.randint(0, MAX_LEN, (B,), device=DEV, dtype=torch.int32)
        want = reference_decode(rotated64(q, pos[:, None], cos, sin), k, v, lengths=lengths)
        for name, fn, kw in (("flash_decode", flash_decode, dict(num_splits=rng.choice([None, 1, 5]))),
                             ("triton_decode", triton_decode, {})):
            err = rel_error(fn(q, k, v, lengths=lengths, rope=(cos, sin, pos), **kw), want)
            if not err <= TOLERANCE[dtype]:
                failures.append(f"{name} rope B={B} Hq={Hkv * group} Hkv={Hkv} T={T} D={D} {dtype} {kw}: "
                                f"relative error {err:.3g}")
    return failures


def check_steps(rng, n):
    failures = []
    for _ in range(n):
        B, Hkv, group, D = rng.randint(1, 8), rng.choice([4, 8, 32]), rng.choice([1, 4]), 128
        dtype, T = rng.choice([torch.float16, torch.float32]), rng.randint(2, 3000)
        cos, sin = rope_tables(T, D, device=DEV)
        q = torch.randn(B, Hkv * group, D, device=DEV).to(dtype)
        k_new, v_new = (torch.randn(B, Hkv, D, device=DEV).to(dtype) for _ in range(2))
        k_cache, v_cache = (torch.randn(B, Hkv, T, D, device=DEV).to(dtype) for _ in range(2))
        pos = torch.randint(0, T, (B,), device=DEV, dtype=torch.int32)
        out, k_want, _ = reference_decode_step(q, k_new, v_new, k_cache, v_cache, pos, cos, sin)
        for step in (unfused_decode_step, fused_decode_step):
            k_c, v_c = k_cache.clone(), v_cache.clone()
            slot = (torch.arange(B), slice(None), pos.cpu().long())  # the slots the step writes
            err = max(rel_error(step(q, k_new, v_new, k_c, v_c, pos, cos, sin), out),
                      rel_error(k_c.cpu()[slot], k_want[slot]))
            if not err <= TOLERANCE[dtype]:
                failures.append(f"{step.__name__} B={B} Hkv={Hkv} group={group} T={T} {dtype}: error {err:.3g}")
    return failures


def test_rope_correctness_sweep():
    # One generator through the four checks in the GPU script's order, with its default seed (0)
    # and its full counts (--quick ran 10, 20, 10 and 5 cases).
    rng, n, failures = random.Random(0), 40, []
    for fn, count in ((check_rope_triton, n), (check_write, 2 * n), (check_attention, n), (check_steps, n // 2)):
        failures += fn(rng, count)
    assert failures == []
