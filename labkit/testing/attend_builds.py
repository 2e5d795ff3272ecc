"""The compile requests the Triton decode launcher makes, for the T4 (and sm_90) compile tests.

:func:`labkit.testing.t4.compile_triton_many_for_t4` takes ``(kernel, signature, constexprs,
num_warps)`` tuples; :func:`attend_build` builds the one that
:func:`labkit.attention.triton_decode.launch` would compile for a dtype, head dim, GQA group,
context and compute capability, contiguous or paged, so the tests compile exactly what runs.
"""

from __future__ import annotations

from dataclasses import replace

import triton

from labkit.attention.triton_decode import _attend_kernel
from labkit.attention.triton_plan import heads_per_program, kernel_config, short_context_block


def attend_signature(dt: str) -> dict[str, str]:
    """Argument types of ``_attend_kernel`` for a cache dtype (``"fp16"``, ``"fp32"``, ``"bf16"``)."""
    p = f"*{dt}"
    return {"Q": p, "K": p, "V": p, "BlockTables": "*i32", "Lengths": "*i32", "Cos": "*fp32", "Sin": "*fp32",
            "Positions": "*i32", "Out": p, "Mws": "*fp32", "Lws": "*fp32", "Accws": "*fp32", "qk_scale": "fp32",
            "T": "i32", "num_splits": "i32", "stride_bt": "i32"}


def attend_build(dt: str, D: int, group: int, split: bool, T: int, cc: tuple[int, int] = (7, 5),
                 paged: bool = False) -> tuple:
    """The ``(kernel, signature, constexprs, num_warps)`` request the launcher makes on ``cc``.

    ``split``: flash-decoding (partials, lengths and RoPE, as the benchmarks and engines call it)
    or the one-pass kernel; ``paged``: K and V read through a block table of 16-token blocks.
    """
    cfg = kernel_config(D, group, cc=cc)
    cfg = replace(cfg, block_t=short_context_block(cfg.block_t, T))  # short contexts take smaller tiles
    heads = heads_per_program(group, cfg.use_dot)
    constexprs = dict(HKV=8, GROUP=group, HEADS=heads, HEAD_CHUNKS=triton.cdiv(group, heads), HEAD_DIM=D,
                      BLOCK_T=cfg.block_t, BS=16, NUM_STAGES=cfg.num_stages, HAS_LENGTHS=split or paged,
                      HAS_ROPE=split, SPLIT=split, PAGED=paged, USE_DOT=cfg.use_dot)
    return (_attend_kernel, attend_signature(dt), constexprs, cfg.num_warps)


__all__ = ["attend_build", "attend_signature"]
