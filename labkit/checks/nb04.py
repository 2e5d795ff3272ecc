"""Checks for notebook 04: RoPE fused into decode.

* :func:`check_rope` — RoPE from the tables in PyTorch, ``fn(x, positions, cos, sin)``.
* :func:`check_rope_kernel` — rotate-half on a tile in a Triton kernel with the signature the
  notebook's stub gives, launched by ``rope_triton(..., kernel=)``.
* :func:`check_write_kv_rope` — the fused RoPE + KV-cache write kernel with the signature the
  notebook's stub gives, launched by ``write_kv_rope(..., kernel=)``, on a contiguous cache and
  a paged pool.

Every case draws fresh random shapes, positions and values; outputs are poisoned with NaN.
"""

from __future__ import annotations

import random

import torch

from labkit import runtime
from labkit.checks._guard import reject_labkit
from labkit.checks.core import TOLERANCE, assert_close, assert_equal, fresh_seed, launch_kernel, poisoned, run_check
from labkit.rope import apply_rope, rope_tables

MAX_LEN = 4096  # table rows: positions well beyond any kernel's block


def _rng() -> random.Random:
    return random.Random(fresh_seed())


def _tables(head_dim: int, max_len: int = MAX_LEN, dtype: torch.dtype = torch.float32):
    return rope_tables(max_len, head_dim, device=runtime.device(), dtype=dtype)


def _expected(x, positions, cos, sin):
    """float64 rotation with the same (float32) table values the code under test reads."""
    return apply_rope(x.double().cpu(), positions.cpu(), cos.double().cpu(), sin.double().cpu())


# ---------------------------------------------------------------------------------------------
# 04.rope: RoPE in PyTorch


def check_rope(student_fn) -> None:
    """``student_fn(x [..., D], positions, cos, sin) -> rotated x`` (x's shape and dtype), rotate-half."""
    reject_labkit(student_fn, '04.rope', SOLUTIONS)
    rng = _rng()
    device = runtime.device()

    def case(dtype=torch.float32, low=0, high=64, D=None, N=None):
        D = D or rng.choice([8, 16, 24, 64])
        N, H = N or rng.randint(2, 9), rng.randint(1, 5)
        cos, sin = _tables(D)
        x = torch.randn(N, H, D, device=device).to(dtype)
        pos = torch.randint(low, high, (N, 1), device=device)
        got = student_fn(x, pos, cos, sin)
        if getattr(got, "dtype", None) != dtype:
            raise AssertionError(f"returns dtype {getattr(got, 'dtype', type(got))}; expected x's dtype {dtype}")
        assert_close(got, _expected(x, pos, cos, sin), rtol=TOLERANCE[dtype], what="rotated x")

    def identity_at_zero():
        x = torch.randn(3, 4, 16, device=device)
        cos, sin = _tables(16)
        assert_close(student_fn(x, torch.zeros(3, 1, dtype=torch.long, device=device), cos, sin), x, rtol=1e-6,
                     what="x rotated at position 0")

    def keeps_lengths():
        D = 16
        x = torch.randn(5, 2, D, device=device, dtype=torch.float64)
        cos, sin = _tables(D, dtype=torch.float64)  # float32 tables' cos² + sin² is 1 only to 1e-8
        got = student_fn(x, torch.randint(0, MAX_LEN, (5, 1), device=device), cos, sin)
        half = D // 2
        norm = lambda t: (t[..., :half] ** 2 + t[..., half:] ** 2).sqrt()  # noqa: E731
        assert_close(norm(got), norm(x), rtol=1e-10, what="length of each pair (x[i], x[i + D/2])")

    def relative():
        D, P = 32, 6
        q = torch.randn(D, device=device, dtype=torch.float64).expand(P, D)
        k = torch.randn(D, device=device, dtype=torch.float64).expand(P, D)
        cos, sin = _tables(D, dtype=torch.float64)
        delta = rng.randint(1, 50)
        p = torch.tensor(sorted(rng.sample(range(0, 2000), P)), device=device)
        scores = (student_fn(q, p, cos, sin) * student_fn(k, p + delta, cos, sin)).sum(-1)
        assert_close(scores, scores[:1].expand(P), rtol=1e-9, what=f"scores at distance {delta} over positions {p.tolist()}")

    run_check("04.rope", [
        ("matches the float64 reference (fp32)", lambda: case()),
        ("fp16 inputs", lambda: case(torch.float16)),
        ("positions beyond any single block (up to 4095)", lambda: case(low=1000, high=MAX_LEN)),
        ("one token (N = 1)", lambda: case(N=1)),
        ("position 0 leaves x unchanged", identity_at_zero),
        ("a rotation: every pair keeps its length", keeps_lengths),
        ("scores depend only on the distance between positions", relative),
    ])


# ---------------------------------------------------------------------------------------------
# 04.rope_kernel: rotate-half on a tile in Triton


def check_rope_kernel(kernel) -> None:
    """``kernel``: a ``@triton.jit`` kernel with the signature of the notebook's ``rope_kernel`` stub."""
    reject_labkit(kernel, '04.rope_kernel', SOLUTIONS)
    from labkit.rope.rotate import rope_triton

    rng = _rng()
    device = runtime.device()

    def case(dtype=torch.float32, D=16, H=None, N=None, block_h=None, low=0, high=64):
        N, H = N or rng.randint(2, 6), H or rng.randint(1, 4)
        cos, sin = _tables(D)
        x = torch.randn(N, H, D, device=device).to(dtype)
        pos = torch.randint(low, high, (N,), device=device)
        out = poisoned((N, H, D), dtype, device)
        launch_kernel(rope_triton, x, pos, cos, sin, out=out, block_h=block_h, kernel=kernel)
        assert_close(out, _expected(x, pos[:, None], cos, sin), rtol=TOLERANCE[dtype], what="rotated x")

    run_check("04.rope_kernel", [
        ("matches the float64 reference (fp32)", lambda: case()),
        ("fp16 inputs", lambda: case(torch.float16)),
        ("heads not a multiple of BLOCK_H", lambda: case(H=5, block_h=2)),
        ("head dim not a power of two (masked columns)", lambda: case(D=24)),
        ("positions beyond any single block (up to 4095)", lambda: case(low=1000, high=MAX_LEN)),
        ("one token (N = 1)", lambda: case(N=1)),
        ("every output element written", lambda: case(H=7, N=5, block_h=4)),
    ])


# ---------------------------------------------------------------------------------------------
# 04.write_kv_rope: rotate the new keys and write keys and values into the cache


def _write_case(kernel, rng, *, dtype=torch.float32, paged=False, rope=True, low=0, high=None, H=None,
                block_h=None, strided=False):
    from labkit.rope.write import write_kv_rope

    device = runtime.device()
    D = 16
    H = H or rng.randint(1, 3)
    if paged:  # a pool of blocks; tokens land at distinct (block, offset) pairs
        R, S = rng.randint(4, 7), rng.choice([4, 8])
        N = rng.randint(2, 6)
        flat = torch.randperm(R * S, generator=torch.Generator().manual_seed(rng.randrange(1 << 30)))[:N]
        rows, slots = (flat // S).to(device), (flat % S).to(device)
        positions = torch.randint(low, high or MAX_LEN, (N,), device=device)
    else:  # a contiguous cache: row = sequence, slot = position, sequences at different lengths
        N, S = rng.randint(2, 5), rng.randint(20, 45)
        R = N
        rows = torch.arange(N, device=device)
        positions = torch.randint(max(low, 0), min(high or S, S), (N,), device=device)
        slots = positions
    cos, sin = _tables(D)
    if strided:  # k and v as slices of one [N, 3, H, D] qkv tensor; the cache a layer of a bigger one
        qkv = torch.randn(N, 3, H, D, device=device).to(dtype)
        k_new, v_new = qkv[:, 1], qkv[:, 2]
        big = torch.randn(2, 3, R, H, S, D, device=device).to(dtype)
        k_cache, v_cache = big[0, 1], big[1, 1]
    else:
        k_new, v_new = (torch.randn(N, H, D, device=device).to(dtype) for _ in range(2))
        k_cache, v_cache = (torch.randn(R, H, S, D, device=device).to(dtype) for _ in range(2))
    k_before, v_before = k_cache.clone(), v_cache.clone()
    launch_kernel(write_kv_rope, k_new, v_new, k_cache, v_cache, rows, slots, (cos, sin, positions) if rope else None,
            block_h=block_h, kernel=kernel)
    want_k = _expected(k_new, positions[:, None], cos, sin) if rope else k_new.double()
    assert_close(k_cache[rows, :, slots], want_k, rtol=TOLERANCE[dtype], what="keys written at cache[row, :, slot]")
    assert_close(v_cache[rows, :, slots], v_new.double(), rtol=TOLERANCE[dtype], what="values written at cache[row, :, slot]")
    untouched = torch.ones(R, S, dtype=torch.bool, device=device)
    untouched[rows, slots] = False
    for name, after, before in (("k_cache", k_cache, k_before), ("v_cache", v_cache, v_before)):
        assert_equal(after.transpose(1, 2)[untouched], before.transpose(1, 2)[untouched],
                     what=f"{name} outside the new tokens' slots (must be left as it was)")


def check_write_kv_rope(kernel) -> None:
    """``kernel``: a ``@triton.jit`` kernel with the signature of the notebook's ``write_kv_rope_kernel`` stub."""
    reject_labkit(kernel, '04.write_kv_rope', SOLUTIONS)
    rng = _rng()
    case = lambda **kw: _write_case(kernel, rng, **kw)  # noqa: E731
    run_check("04.write_kv_rope", [
        ("contiguous cache: rotated key and value at each sequence's position", lambda: case()),
        ("paged pool: rows are blocks, slots are offsets in a block", lambda: case(paged=True)),
        ("positions beyond any single block (up to 4095)", lambda: case(paged=True, low=1000)),
        ("rope=None writes the key unrotated", lambda: case(rope=False)),
        ("fp16 inputs", lambda: case(dtype=torch.float16, paged=True)),
        ("heads not a multiple of BLOCK_H", lambda: case(H=3, block_h=2)),
        ("strided views: k, v sliced from qkv; the cache a layer of a bigger one", lambda: case(strided=True)),
    ])


__all__ = ["check_rope", "check_rope_kernel", "check_write_kv_rope"]


# The labkit objects that implement each exercise: an answer that is one of them fails.
SOLUTIONS = {
    '04.rope': ('labkit.rope:apply_rope', 'labkit.rope:rope_ops', 'labkit.rope.rotate:rope_triton'),
    '04.rope_kernel': ('labkit.rope.rotate:rope_kernel', 'labkit.rope.rotate:rope_triton', 'labkit.rope:apply_rope'),
    '04.write_kv_rope': ('labkit.rope.write:write_kv_rope_kernel', 'labkit.rope.write:write_kv_rope', 'labkit.rope.write:write_decode_kv'),
}
