"""The memory wall of decoding: how many bytes one decode step must move, and the fastest it
can possibly run at a given bandwidth.

Decoding one token reads every weight of the model once (shared by the whole batch) and every
layer's K and V cache once per sequence. At batch 1 and short context the weights dominate (a
7B model's 13.5 GB of fp16 weights against 0.27 GB of KV at 512 tokens); the KV cache grows
with context × batch and overtakes the weights at long context or large batch. Both are
streamed for a handful of flops per byte, so a decode step is bound by memory bandwidth, not
arithmetic. The attention kernel can only save on the KV part (read it once, at full
bandwidth); the weights belong to the matmuls around it.
"""

from __future__ import annotations

from dataclasses import dataclass

# Datasheet bandwidths (GB/s): leads, not measurements.
DATASHEET_GBPS = {"Tesla T4": 320.0, "NVIDIA H100 80GB HBM3": 3350.0, "NVIDIA A100-SXM4-80GB": 2039.0}


@dataclass(frozen=True)
class ModelShape:
    name: str
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    params: float = 0.0  # parameters (weights) of the whole model


MODELS = {
    "gpt2-small": ModelShape("gpt2-small", 12, 12, 12, 64, 124e6),
    "llama-7b": ModelShape("llama-7b", 32, 32, 32, 128, 6.74e9),
    "llama-3-8b": ModelShape("llama-3-8b", 32, 32, 8, 128, 8.03e9),
}


def decode_kv_bytes(batch: int, layers: int, kv_heads: int, head_dim: int, context: int, itemsize: int) -> int:
    """Bytes of K and V one decode step reads: batch · layers · 2 (K and V) · kv_heads · context · head_dim · itemsize."""
    for name, value in (("batch", batch), ("layers", layers), ("kv_heads", kv_heads), ("head_dim", head_dim),
                        ("context", context), ("itemsize", itemsize)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return 2 * batch * layers * kv_heads * context * head_dim * itemsize


def roofline_time_us(nbytes: float, gbps: float) -> float:
    """The least time, in microseconds, to move ``nbytes`` at ``gbps`` gigabytes per second."""
    if gbps <= 0:
        raise ValueError(f"gbps must be positive, got {gbps}")
    return nbytes / (gbps * 1e9) * 1e6


def memory_wall_table(model: ModelShape, contexts, *, batch: int = 1, itemsize: int = 2,
                      bandwidths: dict[str, float] | None = None) -> list[dict]:
    """Rows of {context, kv_mb, <device>_us} for ``model``: the KV bytes per step and the roofline time."""
    bandwidths = bandwidths or {"T4": DATASHEET_GBPS["Tesla T4"], "H100": DATASHEET_GBPS["NVIDIA H100 80GB HBM3"]}
    rows = []
    for T in contexts:
        nbytes = decode_kv_bytes(batch, model.layers, model.kv_heads, model.head_dim, T, itemsize)
        row = {"context": T, "kv_mb": nbytes / 1e6}
        row.update({f"{dev}_us": roofline_time_us(nbytes, bw) for dev, bw in bandwidths.items()})
        rows.append(row)
    return rows


def decode_step_bytes(model: ModelShape, *, batch: int, context: int, itemsize: int = 2) -> dict:
    """Bytes one decode step reads: ``{"weights", "kv", "total", "kv_share"}``.

    The weights are read once per step whatever the batch (every sequence multiplies the same
    matrices); the KV cache once per sequence. ``kv_share`` is the KV part of the total.
    """
    weights = int(model.params * itemsize)
    kv = decode_kv_bytes(batch, model.layers, model.kv_heads, model.head_dim, context, itemsize)
    return {"weights": weights, "kv": kv, "total": weights + kv, "kv_share": kv / (weights + kv)}


def kv_equals_weights_context(model: ModelShape, *, batch: int = 1) -> float:
    """The context at which one step's KV bytes equal the weights' bytes (dtype cancels)."""
    return model.params / (2 * batch * model.layers * model.kv_heads * model.head_dim)


def decode_step_table(model: ModelShape, contexts, batches, *, itemsize: int = 2, gbps: float = 320.0) -> list[dict]:
    """Rows of {batch, context, weights_gb, kv_gb, kv_share, step_us, attention_us} at ``gbps``:
    the least time of the whole step (weights + KV) and of its attention part (KV) alone."""
    rows = []
    for B in batches:
        for T in contexts:
            b = decode_step_bytes(model, batch=B, context=T, itemsize=itemsize)
            rows.append({"batch": B, "context": T, "weights_gb": b["weights"] / 1e9, "kv_gb": b["kv"] / 1e9,
                         "kv_share": b["kv_share"], "step_us": roofline_time_us(b["total"], gbps),
                         "attention_us": roofline_time_us(b["kv"], gbps)})
    return rows
