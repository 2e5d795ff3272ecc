"""Quantized KV caches: 8-bit keys and values with one scale per (token, KV head).

Decode attention reads every cached key and value once per generated token, so its time is
the cache's bytes over the memory bandwidth. Storing K and V in 8 bits halves those bytes
(plus a small scale per row). Each row ``x`` (one token, one KV head, ``D`` values) is
quantized **symmetrically by its absolute maximum**:

    scale = max|x| / QMAX,      x_q = round(x / scale)  (int8: clamp to ±127),
    x ≈ x_q · scale

Two formats (:data:`FORMATS`):

* ``"int8"``: signed 8-bit integers, QMAX = 127, rounded half away from zero. Every GPU
  (the T4 loads int8 as fast as anything); the kernels convert to fp32/fp16 in registers.
* ``"fp8_e4m3"``: ``torch.float8_e4m3fn`` (4 exponent bits, 3 mantissa bits), QMAX = 448,
  rounded to nearest by the conversion. Needs compute capability 8.9 (Ada, Hopper) for the
  kernels' conversions; the T4 has none.

A cache tensor is a :class:`QuantKV`: ``data`` (``[..., T, D]``, 8-bit) and ``scale``
(``[..., T]``, fp32). The same shapes serve the contiguous cache (``[B, Hkv, T, D]``) and a
paged pool (``[num_blocks, Hkv, BS, D]``); the scale of element ``data[i, h, t, :]`` is
``scale[i, h, t]``. The scale is stored in fp32 (4 bytes per 128 values: 3% of an int8 row at
D = 128) so it adds no error of its own.

:func:`quantize_per_channel` is the alternative the accuracy study compares with for keys: one
scale per (KV head, channel) over the tokens (KIVI's key scheme), which follows the few
channels where keys carry large values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from labkit import runtime


@dataclass(frozen=True)
class Format:
    """A quantized cache format: its storage dtype, largest magnitude and the GPUs that have it."""

    name: str
    dtype: torch.dtype
    qmax: float  # the largest representable magnitude the scale maps max|x| to
    min_cc: tuple[int, int]  # the compute capability the kernels need
    triton: str  # Triton's name for the element type (compile tests)


FORMATS = {
    "int8": Format("int8", torch.int8, 127.0, (7, 5), "i8"),
    "fp8_e4m3": Format("fp8_e4m3", torch.float8_e4m3fn, 448.0, (8, 9), "fp8e4nv"),
}
SCALE_DTYPE = torch.float32


def get_format(fmt) -> Format:
    """The :class:`Format` named ``fmt`` (or ``fmt`` itself)."""
    if isinstance(fmt, Format):
        return fmt
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown quantized cache format {fmt!r}; expected one of {sorted(FORMATS)}") from None


def format_supported(fmt, cc: tuple[int, int] | None = None) -> bool:
    """Whether this GPU (or compute capability ``cc``; the T4's 7.5 in sim mode) runs format ``fmt``."""
    f = get_format(fmt)
    if cc is None:
        cc = (7, 5) if runtime.is_sim() or not torch.cuda.is_available() else torch.cuda.get_device_capability()
    return tuple(cc) >= f.min_cc


@dataclass
class QuantKV:
    """One quantized cache tensor (K or V): 8-bit ``data`` [..., T, D] and fp32 ``scale`` [..., T]."""

    data: torch.Tensor
    scale: torch.Tensor
    fmt: str = "int8"

    def __post_init__(self):
        f = get_format(self.fmt)
        if self.data.dtype != f.dtype:
            raise TypeError(f"QuantKV data must be {f.dtype} for format {f.name!r}, got {self.data.dtype}")
        if self.scale.dtype != SCALE_DTYPE or tuple(self.scale.shape) != tuple(self.data.shape[:-1]):
            raise ValueError(f"QuantKV scale must be {SCALE_DTYPE} of shape {tuple(self.data.shape[:-1])}, got "
                             f"{self.scale.dtype} {tuple(self.scale.shape)}")
        if self.data.device != self.scale.device:
            raise ValueError(f"QuantKV data and scale must share a device, got {self.data.device} and "
                             f"{self.scale.device}")

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def device(self) -> torch.device:
        return self.data.device

    def dim(self) -> int:
        return self.data.dim()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``data · scale`` in ``dtype`` (computed in fp32, or in float64 for a float64 result)."""
        work = torch.float64 if dtype == torch.float64 else torch.float32
        return (self.data.to(work) * self.scale.to(work)[..., None]).to(dtype)

    def nbytes(self) -> int:
        """Bytes the tensor occupies: data plus scales."""
        return self.data.numel() * self.data.element_size() + self.scale.numel() * self.scale.element_size()

    def contiguous(self) -> "QuantKV":
        return QuantKV(self.data.contiguous(), self.scale.contiguous(), self.fmt)

    def to(self, device) -> "QuantKV":
        return QuantKV(self.data.to(device), self.scale.to(device), self.fmt)


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer, halves away from zero (what the write kernel does)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def quantize(x: torch.Tensor, fmt: str = "int8") -> QuantKV:
    """Quantize ``x`` [..., D] with one symmetric absmax scale per row (the last dim), in fp32.

    A row of zeros gets scale 0 and zero data. This is the reference the write kernel
    (:mod:`labkit.kvcache.quant_write`) matches.
    """
    f = get_format(fmt)
    x32 = x.detach().to(torch.float32)
    amax = x32.abs().amax(dim=-1)
    scale = amax / f.qmax
    inv = torch.where(amax > 0, f.qmax / torch.where(amax > 0, amax, 1.0), 0.0)
    y = x32 * inv[..., None]
    if f.dtype == torch.int8:
        data = round_half_away(y).clamp_(-f.qmax, f.qmax).to(torch.int8)
    else:
        data = y.clamp(-f.qmax, f.qmax).to(f.dtype)
    return QuantKV(data, scale.to(SCALE_DTYPE), f.name)


def quantize_per_channel(x: torch.Tensor, fmt: str = "int8", *, lengths=None) -> torch.Tensor:
    """Quantize ``x`` [B, H, T, D] with one scale per (sequence, head, channel) over the tokens,
    and return the dequantized tensor (fp32): the per-channel alternative for keys (KIVI).

    Not a cache format the kernels read (a new token would change a channel's scale of every
    earlier token); the accuracy study uses it to compare errors.
    """
    f = get_format(fmt)
    x32 = x.detach().to(torch.float32)
    amax = x32.abs().amax(dim=-2, keepdim=True)  # [B, H, 1, D]
    safe = torch.where(amax > 0, amax, 1.0)
    y = x32 * (f.qmax / safe)
    q = round_half_away(y).clamp(-f.qmax, f.qmax) if f.dtype == torch.int8 else y.to(f.dtype).to(torch.float32)
    return q * (safe / f.qmax)


def empty_quant(shape, fmt: str = "int8", device=None) -> QuantKV:
    """An uninitialised cache tensor: ``shape`` = [rows, Hkv, slots, D] (a contiguous cache
    [B, Hkv, T, D] or a paged pool [num_blocks, Hkv, BS, D])."""
    f = get_format(fmt)
    device = device or runtime.device()
    return QuantKV(torch.empty(shape, dtype=f.dtype, device=device),
                   torch.empty(tuple(shape)[:-1], dtype=SCALE_DTYPE, device=device), f.name)


def bytes_per_token(Hkv: int, D: int, fmt: str | None = None, *, dtype: torch.dtype = torch.float16) -> int:
    """Cache bytes one token takes in one layer (K and V): ``fmt`` quantized, or ``dtype`` if None."""
    if fmt is None:
        return 2 * Hkv * D * torch.empty((), dtype=dtype).element_size()
    return 2 * Hkv * (D * get_format(fmt).dtype.itemsize + torch.empty((), dtype=SCALE_DTYPE).element_size())


def quant_decode_bytes(B: int, Hq: int, Hkv: int, T: int, D: int, fmt: str = "int8", q_itemsize: int = 2) -> int:
    """The fewest bytes a quantized decode step moves: K and V data and scales once, q in, out out."""
    return B * T * bytes_per_token(Hkv, D, fmt) + 2 * B * Hq * D * q_itemsize


def to_paged_quant(x: QuantKV, block_size: int, tables=None):
    """A contiguous quantized cache [B, Hkv, T, D] as a shuffled pool and its block tables
    (as :func:`labkit.kvcache.pool.to_paged` does for fp16): returns ``(pool, tables)``."""
    from labkit.kvcache.pool import to_paged

    data, tables = to_paged(x.data.view(torch.uint8) if x.data.dtype != torch.int8 else x.data, block_size,
                            tables=tables)
    if x.data.dtype != torch.int8:
        data = data.view(x.data.dtype)
    scale, _ = to_paged(x.scale[..., None], block_size, tables=tables)
    return QuantKV(data, scale[..., 0].contiguous(), x.fmt), tables


__all__ = ["FORMATS", "Format", "QuantKV", "SCALE_DTYPE", "bytes_per_token", "empty_quant", "format_supported",
           "get_format", "quant_decode_bytes", "quantize", "quantize_per_channel", "round_half_away",
           "to_paged_quant"]
