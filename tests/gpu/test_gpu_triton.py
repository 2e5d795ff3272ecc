"""Triton decode attention on a GPU (pytest -m gpu): random shapes, no host sync, CUDA graphs.

Against the float64 reference over 60 random shapes: ``triton_decode`` and ``flash_decode``
(fp16/fp32, bf16 where the GPU has it; D 64/128/256; GQA groups 1, 2, 3, 4, 8, 16; T from 1 to
5000 with tile edges; forced and chosen splits, more splits than tiles; ``lengths``; ``rope``
against :func:`labkit.rope.apply_rope`; ``out=`` poisoned with NaN). Then no host
synchronisation on the hot path and a call captured in a CUDA graph and replayed on new
inputs, lengths and positions. The same checks and sizes as the GPU script that passed on the H200.
"""

from __future__ import annotations

import random

import labkit  # noqa: F401  (decides the mode before numba and triton load)
import torch

from labkit import runtime
from labkit.attention import reference_decode
from labkit.attention.triton_decode import flash_decode, triton_decode
from labkit.attention.validate import bf16_supported
from labkit.bench.attention import make_decode_inputs
from labkit.checks.core import TOLERANCE, rel_error
from labkit.decoding.graphs import capture
from labkit.rope import apply_rope, rope_tables

DEV = runtime.device()
SIM = runtime.is_sim()
GQA = (4, 1) if SIM else (32, 8)
D = 128


def sync():
    if not SIM:
        torch.cuda.synchronize()


def check_random(rng: random.Random, n: int) -> list[str]:
    failures = []
    dtypes = [torch.float16, torch.float32] + ([torch.bfloat16] if bf16_supported() else [])
    edges = [1, 2, 15, 16, 17, 63, 64, 65, 127, 128, 129, 1023, 1025]
    for i in range(n):
        B = rng.randint(1, 2 if SIM else 4)
        Hkv = rng.choice((1, 2) if SIM else (1, 2, 4, 8))
        group = rng.choice((1, 2, 4, 8) if SIM else (1, 2, 3, 4, 8, 16))
        Dh = rng.choice((16, 64) if SIM else (64, 128, 256))
        dtype = rng.choice(dtypes)
        T = rng.choice(edges[:4]) if SIM else (rng.choice(edges) if i % 3 == 0 else rng.randint(1, 5000))
        use_lengths, use_rope = rng.random() < 0.5, rng.random() < 0.5
        splits = rng.choice((None, None, 1, 2, 7, 64))
        impl = rng.choice(("triton", "flash"))
        use_dot = rng.choice((None, False, True)) if group > 1 and Dh >= 16 else None
        if SIM and dtype == torch.bfloat16:
            use_dot = False  # the interpreter computes bf16 tl.dot wrongly
        q, k, v = make_decode_inputs(B, Hkv * group, Hkv, T, Dh, dtype)
        lengths = torch.randint(1, T + 1, (B,), dtype=torch.int32, device=DEV) if use_lengths else None
        rope = None
        q_ref = q
        if use_rope:
            cos, sin = rope_tables(T + 64, Dh, device=DEV)
            pos = torch.randint(0, T + 64, (B,), dtype=torch.int32, device=DEV)
            rope = (cos, sin, pos)
            q_ref = apply_rope(q.double().cpu(), pos.cpu()[:, None], cos.cpu(), sin.cpu())
        out = torch.full_like(q, float("nan"))
        if impl == "triton":
            got = triton_decode(q, k, v, lengths=lengths, rope=rope, out=out, use_dot=use_dot)
        else:
            got = flash_decode(q, k, v, lengths=lengths, rope=rope, num_splits=splits, out=out, use_dot=use_dot)
        sync()
        err = rel_error(got, reference_decode(q_ref, k, v, lengths=lengths))
        line = (f"{impl} B={B} Hq={Hkv * group} Hkv={Hkv} T={T} D={Dh} {str(dtype)[6:]} lengths={use_lengths} "
                f"rope={use_rope} splits={splits if impl == 'flash' else 1} use_dot={use_dot}: rel err {err:.2e}")
        if not err <= TOLERANCE[dtype] or got.data_ptr() != out.data_ptr():
            failures.append(line)
            print("FAIL", line)
    print(f"correctness: {n - len(failures)}/{n} random shapes within tolerance")
    return failures


def check_no_sync_and_graph() -> list[str]:
    """No host sync in a call; a call captured in a CUDA graph replays correctly on new inputs."""
    if SIM:
        print("CUDA graph / sync checks: need a GPU (skipped in sim mode)")
        return []
    failures = []
    B, (Hq, Hkv), T = 4, GQA, 3000
    q, k, v = make_decode_inputs(B, Hq, Hkv, T, D, torch.float16)
    cos, sin = rope_tables(4096, D, device=DEV)
    lengths = torch.randint(1, T + 1, (B,), dtype=torch.int32, device=DEV)
    pos = (lengths - 1).to(torch.int32)
    out = torch.empty_like(q)
    call = lambda: flash_decode(q, k, v, lengths=lengths, rope=(cos, sin, pos), out=out)  # noqa: E731
    call()  # compiles and allocates the workspace outside the capture
    sync()
    torch.cuda.set_sync_debug_mode("error")
    try:
        call()
    except RuntimeError as exc:
        failures.append(f"host synchronisation on the hot path: {exc}")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph, _ = capture(call, warmups=1)
    for trial in range(3):  # new values in the same buffers, then replay
        q.normal_(); k.normal_(); v.normal_()  # noqa: E702
        lengths.copy_(torch.randint(1, T + 1, (B,), dtype=torch.int32, device=DEV))
        pos.copy_(lengths - 1)
        out.fill_(float("nan"))
        graph.replay()
        sync()
        q_ref = apply_rope(q.double().cpu(), pos.cpu()[:, None], cos.cpu(), sin.cpu())
        err = rel_error(out, reference_decode(q_ref, k, v, lengths=lengths))
        if not err <= TOLERANCE[torch.float16]:
            failures.append(f"CUDA graph replay {trial}: rel err {err:.2e}")
    print("no host sync; CUDA graph capture and replay:", "FAIL" if failures else "ok")
    return failures


def test_triton_decode_random_shapes():
    torch.manual_seed(0)
    assert check_random(random.Random(0), 60) == []


def test_flash_decode_no_host_sync_and_cuda_graph_replay():
    torch.manual_seed(0)
    assert check_no_sync_and_graph() == []
