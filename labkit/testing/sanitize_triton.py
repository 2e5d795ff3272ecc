"""Run the Triton decode kernels at small, odd shapes: a target for compute-sanitizer's memcheck.

    compute-sanitizer --tool memcheck --error-exitcode 3 python3 -m labkit.testing.sanitize_triton

Covers ``flash_decode`` and its merge kernel (more splits than tiles, splits left empty by short
``lengths``, GQA on both scoring paths), the one-pass kernel, and ``paged_decode`` through block
tables of a shuffled pool; fp16 and fp32, D 64 and 128, T = 1 and T not a multiple of any tile.
Then the Triton decode engine's passes (``TritonEngine.run_pass``: the layer and head kernels of
:mod:`labkit.decoding.triton_layers`), the last one ending at the cache's last slot. Each case
runs twice into an output poisoned with NaN and is compared with the float64 reference; exits 1
on a wrong answer (the sanitizer's exit code reports memory errors).
"""

from __future__ import annotations

import sys

import labkit  # noqa: F401  (decides the mode before triton is imported)
import torch

from labkit import runtime
from labkit.attention import reference_decode
from labkit.attention.triton_decode import flash_decode, triton_decode
from labkit.bench.attention import make_decode_inputs
from labkit.kvcache.pool import to_paged
from labkit.checks.core import poisoned
from labkit.kvcache.paged_attention import paged_decode
from labkit.testing.sanitize import check_twice

# (B, Hq, Hkv, T, D, dtype, splits, block_t)
CASES = [
    (1, 2, 2, 1, 64, torch.float16, None, None),
    (2, 4, 4, 37, 128, torch.float32, 50, 16),  # more splits asked than tiles
    (3, 8, 2, 300, 128, torch.float16, 7, None),  # GQA 4: tl.dot on sm_80+
    (2, 32, 8, 1000, 128, torch.float16, None, None),
    (1, 12, 12, 777, 64, torch.float32, 64, 16),  # the largest merge tile
]


def engine_passes() -> int:
    """TritonEngine passes of S = 1 and 7 tokens on a small random model against its float64 forward."""
    from labkit.decoding.triton_engine import TritonEngine
    from labkit.model.config import ModelConfig
    from labkit.model.transformer import Transformer

    bad = 0
    for dtype in (torch.float16, torch.float32):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=11, d_model=64, n_layers=2, n_heads=2, d_ff=48, max_len=64)
        model = Transformer(cfg).to(runtime.device()).eval()
        tokens = torch.randint(0, 11, (48,), device=runtime.device())
        with torch.no_grad():
            expected = model.double()(tokens[None])[0]
        engine = TritonEngine(model.to(dtype), 48)  # 48 cache slots: the S = 7 pass ends at the last
        for S, start in ((1, 30), (7, 41)):
            engine.logits.fill_(float("nan"))
            bad += check_twice({"TritonEngine.run_pass": lambda: engine.logits_at(tokens, start, S)},
                               expected[start:start + S], dtype, f"S={S} positions {start}..{start + S - 1} "
                               f"{str(dtype)[6:]}")
    return bad


def main() -> int:
    print(runtime.summary())
    bad = 0
    for B, Hq, Hkv, T, D, dtype, splits, block_t in CASES:
        q, k, v = make_decode_inputs(B, Hq, Hkv, T, D, dtype)
        lengths = torch.randint(1, T + 1, (B,), dtype=torch.int32, device=q.device)
        lengths[0] = T
        expected = reference_decode(q, k, v, lengths=lengths)
        kp, table = to_paged(k, 16)
        vp, _ = to_paged(v, 16, tables=table)
        nan = lambda: poisoned(q.shape, q.dtype, q.device)  # noqa: E731 - anything unwritten shows up
        bad += check_twice({
            "flash_decode": lambda: flash_decode(q, k, v, lengths=lengths, num_splits=splits, block_t=block_t,
                                                 out=nan()),
            "triton_decode": lambda: triton_decode(q, k, v, lengths=lengths, out=nan()),
            "paged_decode": lambda: paged_decode(q, kp, vp, table, lengths, num_splits=splits, out=nan()),
        }, expected, dtype, f"B={B} Hq={Hq} Hkv={Hkv} T={T} D={D} {str(dtype)[6:]} splits={splits}")
    bad += engine_passes()
    print(f"{bad} wrong result(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
