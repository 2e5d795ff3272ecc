"""Naive three-pass attention and the fused Numba kernel on a GPU (pytest -m gpu).

Against the float64 reference: ``numba_decode`` over random shapes (fp16/fp32, D 64/128, GQA,
T from 1 up, tile edges, forced and chosen splits, output poisoned with NaN, each call twice so
the split counters must be back at zero), one call captured in a CUDA graph and replayed twice,
``naive_decode`` over random shapes, and notebook 02's exercise kernel. Sizes as the GPU
script that passed on the H200 had them (its full, not ``--quick``, counts).
"""

from __future__ import annotations

import random

import labkit  # noqa: F401  (decides the mode before numba and triton load)
import torch

from labkit import runtime
from labkit.attention import reference_decode
from labkit.attention.naive import naive_decode
from labkit.attention.numba_fused import numba_decode, plan
from labkit.bench.attention import make_decode_inputs
from labkit.checks.core import TOLERANCE, rel_error
from labkit.decoding.graphs import capture

SIM = runtime.is_sim()
COMBOS = [(128, torch.float16, 1), (64, torch.float32, 1), (128, torch.float16, 4), (64, torch.float32, 2),
          (64, torch.float16, 1), (128, torch.float32, 1)]  # (D, dtype, GQA group): few kernels to compile


def check_numba(rng: random.Random, n: int) -> list[str]:
    failures = []
    for i in range(n):
        D, dtype, group = COMBOS[i % len(COMBOS)]
        B, Hkv = rng.randint(1, 2 if SIM else 3), rng.choice((1, 2) if SIM else (1, 2, 8))
        T = rng.choice((1, 5, 63, 64, 65, 129) if i % 3 == 0 else (rng.randint(1, 40 if SIM else 9000),))
        splits = rng.choice((None, None, 1, 2, 7)) if T > 1 else None
        q, k, v = make_decode_inputs(B, Hkv * group, Hkv, T, D, dtype)
        out = torch.full_like(q, float("nan"))
        for _ in range(2):  # twice: the split counters must be back at zero after the first call
            err = rel_error(numba_decode(q, k, v, splits=splits, out=out), reference_decode(q, k, v))
        p = plan(B, Hkv * group, Hkv, T, splits=splits)
        line = f"numba B={B} Hq={Hkv * group} Hkv={Hkv} T={T} D={D} {str(dtype)[6:]} splits={p.splits}: err {err:.1e}"
        if not err <= TOLERANCE[dtype]:
            failures.append(line)
            print("FAIL", line)
    print(f"numba_decode: {n - len(failures)}/{n} random shapes within tolerance", flush=True)
    return failures


def check_graph() -> list[str]:
    """One numba_decode call captured in a CUDA graph, replayed on new query values, twice."""
    if SIM:
        return []
    q, k, v = make_decode_inputs(2, 32, 32, 3001, 128, torch.float16)
    out = torch.empty_like(q)
    numba_decode(q, k, v, out=out)  # compile and create the workspace outside the capture
    torch.cuda.synchronize()
    try:
        graph, _ = capture(lambda: numba_decode(q, k, v, out=out), warmups=1)
    except Exception as exc:  # noqa: BLE001
        return [f"numba_decode cannot be captured in a CUDA graph: {type(exc).__name__}: {exc}"]
    errs = []
    for _ in range(2):
        q.copy_(torch.randn_like(q))
        out.fill_(float("nan"))
        graph.replay()
        errs.append(rel_error(out, reference_decode(q, k, v)))
    print(f"CUDA graph replay of numba_decode (splits {plan(2, 32, 32, 3001).splits}): rel err {errs}")
    return [] if max(errs) <= TOLERANCE[torch.float16] else [f"graph replay: rel err {errs}"]


def check_naive(rng: random.Random, n: int) -> list[str]:
    failures = []
    for _ in range(n):
        B, Hkv, group = rng.randint(1, 4), rng.choice((1, 2, 8, 12)), rng.choice((1, 2, 4))
        D, dtype, T = rng.choice((16, 64, 128)), rng.choice((torch.float16, torch.float32)), rng.randint(1, 5000)
        q, k, v = make_decode_inputs(B, Hkv * group, Hkv, T, D, dtype)
        err = rel_error(naive_decode(q, k, v), reference_decode(q, k, v))
        if not err <= TOLERANCE[dtype]:
            failures.append(f"naive B={B} Hq={Hkv * group} Hkv={Hkv} T={T} D={D} {dtype}: rel err {err:.2e}")
    print(f"naive_decode: {n - len(failures)}/{n} random shapes within tolerance")
    return failures


def check_exercise() -> list[str]:
    from labkit.checks import nb02

    try:  # the notebook's kernel loader moved course-side (labkit.course.solutions)
        from labkit.course.solutions import load_fused_kernel
    except ImportError:
        load_fused_kernel = nb02.load_solution
    fused_decode, tile = load_fused_kernel()
    try:
        nb02.check_fused_kernel(fused_decode, block=tile)
    except AssertionError as exc:
        return [f"notebook 02 exercise kernel: {exc}"]
    return []


def test_numba_decode_random_shapes():
    assert check_numba(random.Random(0), 18) == []


def test_numba_decode_cuda_graph_replay():
    assert check_graph() == []


def test_naive_decode_random_shapes():
    assert check_naive(random.Random(1), 10) == []


def test_notebook_02_exercise_kernel():
    assert check_exercise() == []
