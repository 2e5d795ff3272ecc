"""The contiguous KV cache: every row preallocated to a maximum length (the baseline).

Keys and values live in two tensors ``[num_layers, B, Hkv, max_len, D]``; a row's token at
position ``p`` sits at ``[:, b, :, p]``. Simple and fast to read, but every row reserves
``max_len`` tokens whether it uses them or not: the memory the paged cache wins back.

:class:`FusedRopeKVCache` is the same cache with notebook 04's fused write: it takes the new
keys unrotated and rotates them on their way in, in the launch that writes keys and values.
"""

from __future__ import annotations

import inspect
import math

import torch

from labkit.attention import masked_attention
from labkit.kvcache.base import KVCache, as_length_list

# Implementations that attend through torch's scaled_dot_product_attention with a mask.
TORCH_IMPLS = ("sdpa", "torch")


def _accepts_lengths(impl: str) -> bool:
    from labkit.attention import get_impl

    try:
        return "lengths" in inspect.signature(get_impl(impl)).parameters
    except (ImportError, AttributeError):  # the kernel's module isn't there (yet)
        return False


class ContiguousKVCache(KVCache):
    """A :class:`~labkit.kvcache.base.KVCache` preallocated to ``max_len`` tokens per row.

    impl: how :meth:`attend` computes attention. ``"sdpa"`` (default): torch's
    ``scaled_dot_product_attention`` with a causal mask over the rows' lengths, for any
    number of new tokens. A name from ``labkit.attention.IMPLEMENTATIONS`` whose function takes
    ``lengths=`` (e.g. ``"triton_splitk"``): that decode kernel for single-token passes,
    SDPA for multi-token passes (prefill, verify), which decode kernels don't do.

    static_shapes: attend over all ``max_len`` slots (masked) instead of only the live
    prefix, so every pass with the same ``S`` has the same tensor shapes (CUDA graphs).
    """

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int, max_len: int, *,
                 dtype: torch.dtype = torch.float32, device=None, impl: str = "sdpa",
                 static_shapes: bool = False):
        for name, value in (("num_layers", num_layers), ("batch_size", batch_size),
                            ("num_kv_heads", num_kv_heads), ("head_dim", head_dim), ("max_len", max_len)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if impl not in TORCH_IMPLS:
            from labkit.attention import IMPLEMENTATIONS

            if impl not in IMPLEMENTATIONS:
                raise ValueError(f"impl={impl!r} is not an implementation; expected one of "
                                 f"{sorted(set(TORCH_IMPLS) | set(IMPLEMENTATIONS))}")
        self.num_layers, self.batch_size = num_layers, batch_size
        self.num_kv_heads, self.head_dim, self.max_len = num_kv_heads, head_dim, max_len
        self.dtype, self.device = dtype, torch.device(device) if device is not None else torch.device("cpu")
        self.impl, self.static_shapes = impl, static_shapes
        self._kernel = impl not in TORCH_IMPLS and _accepts_lengths(impl)
        shape = (num_layers, batch_size, num_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=dtype, device=self.device)
        self.lengths = torch.zeros(batch_size, dtype=torch.int32, device=self.device)
        self._host = [0] * batch_size
        self._rows = torch.arange(batch_size, device=self.device)
        self._slots = torch.arange(max_len, device=self.device)
        self._pending = 0  # S of the pass begun and not yet committed
        self._pass = None  # (positions [B, S], causal mask [B, 1, S, T]) of this pass, made by its first layer

    def begin(self, num_new: int) -> torch.Tensor:
        if num_new < 1:
            raise ValueError(f"num_new must be at least 1, got {num_new}")
        longest = max(self._host)
        if longest + num_new > self.max_len:
            raise ValueError(f"the cache holds at most max_len={self.max_len} tokens per row; a row at "
                             f"{longest} tokens can't take {num_new} more")
        self._pending, self._pass = num_new, None
        return self.lengths.long()[:, None] + self._slots[None, :num_new]

    def _this_pass(self):
        # Computed from the device lengths inside the pass (not in begin), so that a pass
        # replayed from a CUDA graph recomputes them; shared by every layer.
        if self._pass is None:
            S = self._pending
            T = self.max_len if self.static_shapes else min(self.max_len, max(self._host) + S)
            pos = self.lengths.long()[:, None] + self._slots[None, :S]  # [B, S]
            visible = self._slots[None, None, :T] <= pos[:, :, None]
            # Additive, in the cache's dtype: SDPA would convert a boolean mask in every layer.
            mask = torch.zeros(visible.shape, dtype=self.dtype, device=self.device).masked_fill_(~visible, float("-inf"))
            self._pass = (pos, mask[:, None])
        return self._pass

    def _check_new(self, k: torch.Tensor, v: torch.Tensor) -> None:
        want = (self.batch_size, self.num_kv_heads, self._pending, self.head_dim)
        if tuple(k.shape) != want or tuple(v.shape) != want:
            raise ValueError(f"k and v must have shape {list(want)} [B, Hkv, S, D], got "
                             f"{list(k.shape)} and {list(v.shape)}")
        if k.dtype != self.dtype or v.dtype != self.dtype:
            raise TypeError(f"k and v must have the cache's dtype {self.dtype}, got {k.dtype} and {v.dtype}")

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self._check_new(k, v)
        S = self._pending
        pos = self._this_pass()[0]
        rows = self._rows[:, None].expand(-1, S)
        # Advanced indices on dims 0 and 2 around a slice put their [B, S] dims first.
        self.k[layer][rows, :, pos] = k.transpose(1, 2)
        self.v[layer][rows, :, pos] = v.transpose(1, 2)

    def attend(self, layer: int, q: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
        B, Hq, S, D = q.shape
        if (B, S, D) != (self.batch_size, self._pending, self.head_dim) or Hq % self.num_kv_heads:
            raise ValueError(f"q must have shape [{self.batch_size}, Hq, {self._pending}, {self.head_dim}] "
                             f"with Hq a multiple of {self.num_kv_heads}, got {list(q.shape)}")
        if self._kernel and S == 1:
            from labkit.attention import decode_attention

            out = decode_attention(q[:, :, 0].contiguous(), self.k[layer], self.v[layer], impl=self.impl,
                                   scale=scale, lengths=self.lengths + 1)
            return out.to(q.dtype).unsqueeze(2)
        mask = self._this_pass()[1]  # [B, 1, S, T]: query i of row b sees keys 0 .. lengths[b] + i
        T = mask.shape[-1]
        k, v = self.k[layer][:, :, :T], self.v[layer][:, :, :T]
        scale = 1.0 / math.sqrt(D) if scale is None else scale
        return masked_attention(q, k, v, mask, scale=scale)

    def commit(self) -> None:
        if not self._pending:
            raise RuntimeError("commit() without begin(): no pass is in progress")
        self.lengths += self._pending
        self._host = [n + self._pending for n in self._host]
        self._pending = 0

    def truncate(self, lengths) -> None:
        new = as_length_list(lengths, self.batch_size)
        for b, (n, old) in enumerate(zip(new, self._host)):
            if not 0 <= n <= old:
                raise ValueError(f"row {b} holds {old} tokens; can't truncate it to {n}")
        self._host = new
        if len(set(new)) == 1:
            self.lengths.fill_(new[0])  # a scalar kernel argument: no host-to-device copy
        else:
            self.lengths.copy_(torch.tensor(new, dtype=torch.int32), non_blocking=True)
        self._pending = 0

    def host_lengths(self) -> list[int]:
        return list(self._host)

    def memory_bytes(self) -> int:
        """Bytes reserved for keys and values (all of ``max_len``, used or not)."""
        return 2 * self.k.numel() * self.k.element_size()


class FusedRopeKVCache(ContiguousKVCache):
    """A :class:`ContiguousKVCache` whose write rotates the keys: RoPE and the cache write in one launch.

    :meth:`append` takes the pass's *unrotated* keys and values [B, Hkv, S, D] and writes them
    with :func:`labkit.rope.write.write_kv_rope`: key ``i`` of row ``b`` rotated at, and stored
    at, position ``lengths[b] + i``. The model sees ``fuses_rope`` and rotates only ``q``.

    rope_tables: ``(cos, sin)`` [max_pos, D/2] (made float32 and contiguous on the cache's
    device), the tables the model's own rotation reads. write_kernel: the ``@triton.jit`` kernel
    the write launches (``None``: labkit's), with the signature of ``write_kv_rope_kernel``.
    Other keyword arguments as :class:`ContiguousKVCache`.
    """

    fuses_rope = True

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int, max_len: int, *,
                 rope_tables, write_kernel=None, **kwargs):
        super().__init__(num_layers, batch_size, num_kv_heads, head_dim, max_len, **kwargs)
        cos, sin = rope_tables
        if tuple(cos.shape[1:]) != (head_dim // 2,) or cos.dim() != 2 or cos.shape != sin.shape:
            raise ValueError(f"rope_tables must be (cos, sin), each [max_pos, {head_dim // 2}] (head_dim // 2); "
                             f"got {tuple(cos.shape)} and {tuple(sin.shape)}")
        self.cos, self.sin = (t.to(self.device, torch.float32).contiguous() for t in (cos, sin))
        self.write_kernel = write_kernel

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        from labkit.rope.write import write_kv_rope

        self._check_new(k, v)
        B, S = self.batch_size, self._pending
        pos = self._this_pass()[0].reshape(-1)  # [B*S], row-major like the tokens below
        # [B, Hkv, S, D] -> [B*S, Hkv, D]: a view when k, v are slices of the model's qkv.
        k_new = k.transpose(1, 2).reshape(B * S, self.num_kv_heads, self.head_dim)
        v_new = v.transpose(1, 2).reshape(B * S, self.num_kv_heads, self.head_dim)
        if k_new.stride() != v_new.stride() or k_new.stride(-1) != 1:  # the kernel takes one set of strides
            k_new, v_new = k_new.contiguous(), v_new.contiguous()
        rows = self._rows[:, None].expand(B, S).reshape(-1).contiguous()  # a copy only when S > 1
        # Indices were bounded by begin(): no check, so no device sync inside the pass.
        write_kv_rope(k_new, v_new, self.k[layer], self.v[layer], rows, pos, (self.cos, self.sin, pos),
                      check_indices=False, kernel=self.write_kernel)
