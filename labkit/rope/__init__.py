"""Rotary position embedding (RoPE), notebook 04: the reference, its Triton kernels, fusion.

* :mod:`.reference`: the tables, the rotate-half rotation (:func:`apply_rope`, validated) and
  the same rotation as a model's PyTorch ops (:func:`rope_ops`, the unfused baseline).
* :mod:`.rotate`: the rotation as one Triton kernel (:func:`rope_triton`).
* :mod:`.write`: rotate the new keys and write K and V into a contiguous cache or a paged
  pool in one launch (:func:`write_kv_rope`).
* :mod:`.fusion`: a decode step with RoPE, unfused (separate ops) and fused (rotation inside
  the KV write and the attention kernel's query load), and what each costs.

``from labkit.rope import X`` works for every public name of the four modules. The reference
is imported with the package; the kernels (which import Triton) on first use.
"""

from __future__ import annotations

import importlib

from labkit.rope.reference import (apply_rope, apply_rope_interleaved, interleaved_permutation, rope_angles,
                                   rope_ops, rope_tables)

_LAZY = {
    "rope_kernel": "rotate", "rope_triton": "rotate",
    "write_kv_rope": "write", "write_kv_rope_kernel": "write", "write_decode_kv": "write",
    "validate_write": "write",
    "unfused_decode_step": "fusion", "fused_decode_step": "fusion", "reference_decode_step": "fusion",
    "StepCost": "fusion", "count_torch_ops": "fusion", "decode_step_costs": "fusion",
    "summarize_costs": "fusion", "format_costs": "fusion",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"labkit.rope.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'labkit.rope' has no attribute {name!r}")


__all__ = ["apply_rope", "apply_rope_interleaved", "interleaved_permutation", "rope_angles", "rope_ops",
           "rope_tables", *_LAZY]
