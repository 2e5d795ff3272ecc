"""The compile requests the Triton decode launchers make, for the T4 (and sm_90) compile tests.

:func:`labkit.testing.t4.compile_triton_many_for_t4` takes ``(kernel, signature, constexprs,
num_warps)`` tuples; :func:`attend_build` builds the one that
:func:`labkit.attention.triton_decode.launch` would compile for a dtype, head dim, GQA group,
context and compute capability, contiguous or paged. The configuration and the constexprs come
from the launcher's own :func:`~labkit.attention.triton_decode.config_for` and
:func:`~labkit.attention.triton_decode.constexprs`, so the tests compile exactly what runs.
"""

from __future__ import annotations

from labkit.attention.triton_decode import _attend_kernel, config_for, constexprs
from labkit.attention.triton_quant import _quant_attend_kernel, quant_config_for, quant_constexprs


def attend_signature(dt: str) -> dict[str, str]:
    """Argument types of ``_attend_kernel`` for a cache dtype (``"fp16"``, ``"fp32"``, ``"bf16"``)."""
    p = f"*{dt}"
    return {"Q": p, "K": p, "V": p, "BlockTables": "*i32", "Lengths": "*i32", "Cos": "*fp32", "Sin": "*fp32",
            "Positions": "*i32", "Out": p, "Mws": "*fp32", "Lws": "*fp32", "Accws": "*fp32", "qk_scale": "fp32",
            "T": "i32", "num_splits": "i32", "stride_bt": "i32"}


def attend_build(dt: str, D: int, group: int, split: bool, T: int, cc: tuple[int, int] = (7, 5),
                 paged: bool = False) -> tuple:
    """The ``(kernel, signature, constexprs, num_warps)`` request the launcher makes on ``cc``.

    ``split``: flash-decoding (partials, lengths and RoPE, as the benchmarks and engines call
    it; short contexts take smaller tiles) or the one-pass kernel (its tile at any context);
    ``paged``: K and V read through a block table of 16-token blocks.
    """
    cfg = config_for(D, group, T, cc=cc, short_context=split or paged, itemsize=4 if dt == "fp32" else 2)
    meta = constexprs(8, group, D, cfg, bs=16 if paged else 1, has_lengths=split or paged, has_rope=split,
                      split=split, paged=paged)
    return (_attend_kernel, attend_signature(dt), meta, cfg.num_warps)


def quant_signature(fmt: str) -> dict[str, str]:
    """Argument types of the quantized kernel for an 8-bit Triton dtype (``"i8"``, ``"fp8e4nv"``)."""
    return {"Q": "*fp16", "K": f"*{fmt}", "V": f"*{fmt}", "KS": "*fp32", "VS": "*fp32", "BlockTables": "*i32",
            "Lengths": "*i32", "Out": "*fp16", "Mws": "*fp32", "Lws": "*fp32", "Accws": "*fp32", "qk_scale": "fp32",
            "T": "i32", "num_splits": "i32", "stride_bt": "i32"}


def quant_build(fmt: str, D: int, group: int, split: bool, T: int, cc: tuple[int, int] = (7, 5),
                paged: bool = False, *, hkv: int = 8, has_lengths: bool = True, heads_on_n: bool | None = None,
                **overrides) -> tuple:
    """The ``(kernel, signature, constexprs, num_warps)`` request
    :func:`~labkit.attention.triton_quant.quant_launch` makes on ``cc`` for fp16 queries over an
    8-bit cache (``paged``: 16-token pool blocks). ``overrides`` (``block_t``, ``num_warps``,
    ``num_stages``) replace the plan's, as ``quant_flash_decode``'s keywords do, and so does
    ``heads_on_n`` (default: the plan's)."""
    cfg = quant_config_for(D, group, T, cc=cc, paged=paged, heads_on_n=heads_on_n, **overrides)
    meta = quant_constexprs(hkv, group, D, cfg, bs=16 if paged else 1, has_lengths=has_lengths, split=split,
                            paged=paged, asm=cc >= (8, 0))
    return (_quant_attend_kernel, quant_signature(fmt), meta, cfg.num_warps)


__all__ = ["attend_build", "attend_signature", "quant_build", "quant_signature"]
