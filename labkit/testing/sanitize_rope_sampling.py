"""Run notebook 04's and 06's kernels at small, odd shapes: a target for compute-sanitizer's memcheck.

    compute-sanitizer --tool memcheck --error-exitcode 3 python3 -m labkit.testing.sanitize_rope_sampling

Covers RoPE (``rope_triton``: head counts and dims that fill no tile), the fused cache write
(``write_kv_rope``: N tokens into a NaN-poisoned paged pool at positions far beyond the slots,
with and without RoPE, and from strided views of one qkv tensor), and top-k/top-p sampling
(``sample_top_k_top_p`` on its top-k, search and compacting paths, and ``sample_top_p``'s plain
bisection; vocabularies not a multiple of any tile, a row of -inf but one token, a row whose
first third is -inf). Each case runs
twice. RoPE and the write are compared with the float64 reference, and the write must leave
every other slot untouched; draws must lie in the kept set and repeat with the same seed.
Exits 1 on a wrong answer (the sanitizer's exit code reports memory errors).
"""

from __future__ import annotations

import sys

import labkit  # noqa: F401  (decides the mode before triton is imported)
import torch

from labkit import runtime
from labkit.checks.core import poisoned
from labkit.decoding.sampling import probs
from labkit.decoding.sampling_launch import sample_top_k_top_p, sample_top_p
from labkit.rope import apply_rope, rope_tables
from labkit.rope.rotate import rope_triton
from labkit.rope.write import write_kv_rope
from labkit.testing.sanitize import check_twice

MAX_LEN = 4096
ROPE_CASES = [(1, 1, 2, torch.float32), (7, 5, 48, torch.float16), (3, 12, 128, torch.float32)]  # (N, H, D, dtype)
WRITE_CASES = [(6, 5, 8, 48, 11, torch.float16), (3, 3, 17, 128, 4, torch.float32)]  # (R, H, S, D, N, dtype)
SAMPLING_CASES = [  # (V, top_k, top_p, draws)
    (37, None, 0.8, 64),
    (300, None, 0.9, 512),  # 16-token tiles: the compacting search
    (5000, 40, 0.9, 1),
    (20000, None, 0.95, 1),
    (20000, 200, None, 1),
]


def rope_cases(dev) -> int:
    bad = 0
    for N, H, D, dtype in ROPE_CASES:
        cos, sin = rope_tables(MAX_LEN, D, device=dev)
        x = torch.randn(N, H, D, device=dev).to(dtype)
        pos = torch.randint(0, MAX_LEN, (N,), device=dev)
        expected = apply_rope(x.double(), pos[:, None], cos, sin)
        bad += check_twice({"rope_triton": lambda: rope_triton(x, pos, cos, sin, out=poisoned(x.shape, dtype, dev))},
                           expected, dtype, f"N={N} H={H} D={D} {str(dtype)[6:]}")
    return bad


def write_cases(dev) -> int:
    bad = 0
    for R, H, S, D, N, dtype in WRITE_CASES:
        cos, sin = rope_tables(MAX_LEN, D, device=dev)
        flat = torch.randperm(R * S, device=dev)[:N]
        rows, slots = flat // S, flat % S
        pos = torch.randint(S, MAX_LEN, (N,), device=dev)  # positions are not slots
        qkv = torch.randn(N, 3, H, D, device=dev).to(dtype)  # k and v as strided views of one tensor
        k_new, v_new = qkv[:, 1], qkv[:, 2]
        for rope in (True, False):
            k_want = apply_rope(k_new.double(), pos[:, None], cos, sin) if rope else k_new.double()

            def run():
                k_cache, v_cache = poisoned((R, H, S, D), dtype, dev), poisoned((R, H, S, D), dtype, dev)
                write_kv_rope(k_new, v_new, k_cache, v_cache, rows, slots, (cos, sin, pos) if rope else None)
                got = torch.cat([k_cache[rows, :, slots], v_cache[rows, :, slots]], -1)
                written = int(torch.isfinite(k_cache).sum() + torch.isfinite(v_cache).sum())
                return got if written == 2 * N * H * D else torch.full_like(got, float("nan"))  # a stray write

            bad += check_twice({"write_kv_rope": run}, torch.cat([k_want, v_new.double()], -1), dtype,
                               f"R={R} H={H} S={S} D={D} N={N} {str(dtype)[6:]} rope={rope}")
    return bad


def sampling_cases(dev) -> int:
    bad = 0
    for V, top_k, top_p, draws in SAMPLING_CASES:
        logits = torch.randn(3, V, device=dev) * 3
        logits[0] = float("-inf")
        logits[0, V // 2] = 1.0  # one token left: every draw is that one
        logits[1, : V // 3] = float("-inf")  # a ban list filling whole tiles
        keep = probs(logits, 0.9, top_k, top_p) > 0
        runs = {"sample_top_k_top_p": lambda s: sample_top_k_top_p(logits, 0.9, top_k, top_p, seed=s,
                                                                   num_samples=draws)}
        if top_k is None:
            runs["sample_top_p"] = lambda s: sample_top_p(logits, 0.9, top_p, s, num_samples=draws)
        for name, run in runs.items():
            a, b = run(5).view(3, -1), run(5).view(3, -1)
            if runtime.MODE == "gpu":
                torch.cuda.synchronize()
            inside = bool(((a >= 0) & (a < V)).all()) and bool(keep.gather(1, a.clamp(0, V - 1)).all())
            wrong = not (inside and torch.equal(a, b))
            bad += wrong
            print(f"{'FAIL' if wrong else 'ok  '} {name} V={V} top_k={top_k} top_p={top_p} draws={draws}: "
                  f"{'in the kept set' if inside else 'a token outside the kept set'}, "
                  f"{'same' if torch.equal(a, b) else 'different'} draws with the same seed")
    return bad


def main() -> int:
    print(runtime.summary())
    dev = runtime.device()
    torch.manual_seed(0)
    bad = rope_cases(dev) + write_cases(dev) + sampling_cases(dev)
    print(f"{bad} wrong result(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
