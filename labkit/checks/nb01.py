"""Checks for notebook 01: naive three-pass decode attention and its bytes model."""

from __future__ import annotations

import random

import torch

from labkit import runtime
from labkit.attention.reference import decode_bytes, reference_decode
from labkit.checks._guard import assert_not_labkit, run_guarded
from labkit.checks.core import TOLERANCE, assert_close, assert_equal, fresh_seed, run_check


def _inputs(rng: random.Random, B: int, Hq: int, Hkv: int, T: int, D: int, dtype: torch.dtype, q_gain: float = 1.0):
    g = torch.Generator().manual_seed(rng.randrange(1 << 62))
    q, k, v = (torch.randn(s, generator=g, dtype=torch.float32) for s in ((B, Hq, D), (B, Hkv, T, D), (B, Hkv, T, D)))
    return tuple(t.to(runtime.device(), dtype) for t in (q * q_gain, k, v))


def _attention_case(fn, rng, *, B=None, Hq=None, Hkv=None, T=None, D=None, dtype=torch.float32, scale=None,
                    q_gain=1.0, rtol=None) -> None:
    heads = runtime.SIZES.heads
    Hkv = Hkv or heads
    Hq = Hq or Hkv
    B = B or rng.randint(1, 2)
    T = T or rng.randint(17, 4 * max(runtime.SIZES.contexts[0], 16))
    D = D or runtime.SIZES.head_dim
    q, k, v = _inputs(rng, B, Hq, Hkv, T, D, dtype, q_gain)
    expected = reference_decode(q, k, v, scale=scale)
    kwargs = {} if scale is None else {"scale": scale}
    yours = run_guarded(fn, SOLUTIONS["01.naive_decode"], q, k, v, **kwargs)
    if not isinstance(yours, torch.Tensor):
        raise AssertionError(f"expected a torch.Tensor, got {type(yours).__name__}")
    if yours.dtype != q.dtype:
        raise AssertionError(f"output dtype {yours.dtype}, expected q's dtype {q.dtype}")
    assert_close(yours, expected, rtol=rtol or TOLERANCE[dtype], what=f"output for B={B} Hq={Hq} Hkv={Hkv} T={T} D={D}")


def check_naive_decode(fn) -> None:
    """``fn(q, k, v, scale=None) -> [B, Hq, D]``: three-pass decode attention."""
    rng = random.Random(fresh_seed())
    run_check("01.naive_decode", [
        ("matches the float64 reference (fp32)", lambda: _attention_case(fn, rng)),
        ("fp16 inputs, fp16 output", lambda: _attention_case(fn, rng, dtype=torch.float16)),
        ("GQA: 4 query heads per KV head", lambda: _attention_case(fn, rng, Hq=8, Hkv=2)),
        ("T = 1", lambda: _attention_case(fn, rng, T=1)),
        ("a batch of different sequences", lambda: _attention_case(fn, rng, B=3)),
        ("the scale argument", lambda: _attention_case(fn, rng, scale=rng.uniform(0.05, 0.5))),
        ("large scores do not overflow", lambda: _attention_case(fn, rng, q_gain=300.0, rtol=1e-3)),
        ("your own code (not labkit's answer)", lambda: assert_not_labkit(fn, SOLUTIONS["01.naive_decode"])),
    ])


def _bytes_case(fn, rng, keys=("scores", "softmax", "output"), **over) -> None:
    """Compare only the passes named in ``keys``: a wrong pass fails its own property."""
    args = dict(B=rng.randint(1, 16), Hq=rng.choice([12, 32, 64]), Hkv=None, T=rng.randint(2, 40_000),
                D=rng.choice([64, 128]), itemsize=rng.choice([2, 4]))
    args.update(over)
    args["Hkv"] = args["Hkv"] or args["Hq"]
    want = _pass_bytes(**args)
    got = run_guarded(fn, SOLUTIONS["01.pass_bytes"], **args)
    if not isinstance(got, dict) or not set(keys) <= set(got):
        raise AssertionError(f"expected a dict with keys {sorted(want)}, got {got!r}")
    for name in keys:
        assert_equal(got[name], want[name], what=f"{name} pass bytes for {args}")


def _pass_bytes(B, Hq, Hkv, T, D, itemsize):
    q_or_out, kv, inter = B * Hq * D, B * Hkv * T * D, B * Hq * T
    return {"scores": itemsize * (q_or_out + kv + inter), "softmax": itemsize * 2 * inter,
            "output": itemsize * (inter + kv + q_or_out)}


def _total_case(fn, rng) -> None:
    args = dict(B=rng.randint(1, 16), Hq=32, Hkv=8, T=rng.randint(2, 40_000), D=128, itemsize=2)
    got = run_guarded(fn, SOLUTIONS["01.pass_bytes"], **args)
    extra = sum(got.values()) - decode_bytes(*(args[a] for a in ("B", "Hq", "Hkv", "T", "D", "itemsize")))
    assert_equal(extra, 4 * args["B"] * args["Hq"] * args["T"] * args["itemsize"],
                 what=f"bytes beyond decode's minimum (two intermediates, each written and read) for {args}")


def check_pass_bytes(fn) -> None:
    """``fn(B, Hq, Hkv, T, D, itemsize) -> {"scores": n, "softmax": n, "output": n}``: bytes per pass."""
    rng = random.Random(fresh_seed())
    run_check("01.pass_bytes", [
        ("scores pass: reads q and K, writes the scores", lambda: _bytes_case(fn, rng, ("scores",))),
        ("softmax pass: reads the scores, writes the probabilities", lambda: _bytes_case(fn, rng, ("softmax",))),
        ("output pass: reads the probabilities and V, writes the output", lambda: _bytes_case(fn, rng, ("output",))),
        ("GQA: K and V are read once per KV head (scores, output)",
         lambda: _bytes_case(fn, rng, ("scores", "output"), Hq=32, Hkv=8)),
        ("fp16 is half the bytes of fp32 (every pass)", lambda: _bytes_case(fn, rng, itemsize=2)),
        ("a one-token context (every pass)", lambda: _bytes_case(fn, rng, T=1)),
        ("the total: decode's minimum plus two round trips of the intermediates", lambda: _total_case(fn, rng)),
        ("your own code (not labkit's answer)", lambda: assert_not_labkit(fn, SOLUTIONS["01.pass_bytes"])),
    ])


__all__ = ["check_naive_decode", "check_pass_bytes"]


# The labkit objects that implement each exercise of notebook 01 (an answer that is, wraps or
# calls one of them fails its check; the grader flags it).
SOLUTIONS = {
    "01.naive_decode": ("labkit.attention.naive:naive_decode", "labkit.attention.naive:naive_passes",
                        "labkit.attention.naive:scores_pass", "labkit.attention.reference:reference_decode",
                        "labkit.attention.sdpa:sdpa_decode", "labkit.attention:decode_attention"),
    "01.pass_bytes": ("labkit.attention.naive:pass_bytes", "labkit.attention.naive:extra_bytes"),
}
