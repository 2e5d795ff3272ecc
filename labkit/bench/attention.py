"""Benchmarking decode attention: correctness first, then time, effective GB/s and % of roofline.

:func:`bench_decode` is the one measurement every attention notebook and ``labkit bench`` use.
"""

from __future__ import annotations

import torch

from labkit import runtime
from labkit.attention import decode_bytes, get_impl, reference_decode
from labkit.bench.records import Record
from labkit.bench.timing import gbps, rotating, rotation_count, time_ms
from labkit.checks.core import rel_error

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def make_decode_inputs(B: int, Hq: int, Hkv: int, T: int, D: int, dtype: torch.dtype, *, device=None,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q [B, Hq, D] and k, v [B, Hkv, T, D] (standard normal, never zeros) on ``device``."""
    device = device or runtime.device()
    shapes = [(B, Hq, D), (B, Hkv, T, D), (B, Hkv, T, D)]
    return tuple(torch.randn(s, generator=generator, dtype=torch.float32, device="cpu").to(device, dtype)
                 if generator is not None else torch.randn(s, dtype=dtype, device=device) for s in shapes)


def bench_decode(impls, *, B: int, Hq: int, Hkv: int, T: int, D: int, dtype: torch.dtype,
                 roofline_gbps: float | None, check: bool = True, warmup: int = 25, rep: int = 100,
                 impl_kwargs: dict | None = None) -> list[Record]:
    """Check, then time, each implementation in ``impls`` on one decode shape.

    Each implementation is first compared with the float64 reference (the relative error goes
    into ``Record.extra["rel_error"]``; above tolerance raises ``AssertionError``), then timed
    with CUDA events over enough input sets that the KV working set is >= 4x the L2. In sim
    mode only the correctness check runs and ``time_ms`` stays ``None``.
    ``impl_kwargs`` maps an implementation name to extra keyword arguments for it.
    """
    nbytes = decode_bytes(B, Hq, Hkv, T, D, torch.empty((), dtype=dtype).element_size())
    sets = [make_decode_inputs(B, Hq, Hkv, T, D, dtype) for _ in range(rotation_count(nbytes))]
    expected = reference_decode(*sets[0]) if check else None
    shape = {"B": B, "Hq": Hq, "Hkv": Hkv, "T": T, "D": D}
    records = []
    for name in impls:
        fn = get_impl(name)
        kwargs = (impl_kwargs or {}).get(name, {})
        extra = {}
        if check:
            err = rel_error(fn(*sets[0], **kwargs), expected)
            extra["rel_error"] = err
            if not err <= TOLERANCE[dtype]:
                raise AssertionError(f"{name} at {shape} {dtype}: relative error {err:.3g} > {TOLERANCE[dtype]}")
        ms = time_ms(rotating(lambda q, k, v: fn(q, k, v, **kwargs), sets), warmup=warmup, rep=rep)
        bw = gbps(nbytes, ms)
        pct = None if bw is None or not roofline_gbps else 100.0 * bw / roofline_gbps
        records.append(Record(name, shape, str(dtype).replace("torch.", ""), nbytes, ms, bw, pct, extra))
    del sets
    return records
