"""The memory wall of decoding: how many bytes one decode step must move, and the fastest it
can possibly run at a given bandwidth.

Decoding one token reads every layer's K and V cache once: at long context that dwarfs the
query, the output and (for small batches) even the weights, so decode attention is bound by
memory bandwidth, not arithmetic.
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


MODELS = {
    "gpt2-small": ModelShape("gpt2-small", 12, 12, 12, 64),
    "llama-7b": ModelShape("llama-7b", 32, 32, 32, 128),
    "llama-3-8b": ModelShape("llama-3-8b", 32, 32, 8, 128),
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
