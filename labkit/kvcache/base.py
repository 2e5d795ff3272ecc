"""The KV-cache protocol: what the model calls, what every cache implements.

A cache holds, for every layer, the keys (already rotated by RoPE) and values of the tokens
each sequence (batch row) has seen so far. A forward pass over ``S`` new tokens per row
(S = 1: a decode step; S > 1: a prefill chunk, or a speculative verify of gamma + 1 tokens)
calls it like this::

    positions = cache.begin(S)            # [B, S] int64: lengths[b] + i, for RoPE
    for layer in range(num_layers):
        ...                               # q [B, Hq, S, D], k, v [B, Hkv, S, D]; rotate q, k
        cache.append(layer, k, v)         # write the S new tokens at positions[b, i]
        o = cache.attend(layer, q)        # [B, Hq, S, D], causal over cached + new tokens
        ...
    cache.commit()                        # lengths += S: the new tokens are now cached

Rules every implementation keeps:

* ``lengths`` is a [B] int32 tensor on the cache's device: the tokens committed per row.
  It is updated **in place** (never rebound), so code that captured it (CUDA graphs, a
  kernel's argument list) keeps seeing the current lengths. :meth:`host_lengths` gives the
  same numbers as Python ints without a device sync.
* Rows may hold different lengths (batched decode of sequences of different lengths).
  ``S`` is the same for every row in one pass: to feed rows different numbers of tokens,
  right-pad to the longest, then :meth:`truncate` each row to its real length afterwards
  (the padding was written past the row's length, so it is invisible and later overwritten).
* ``attend`` is causal: query ``i`` of row ``b`` sits at position ``lengths[b] + i`` and sees
  keys ``0 .. lengths[b] + i`` (all cached tokens plus new tokens ``0 .. i``). Scale defaults
  to ``1/sqrt(D)``. Query heads ``Hq`` are a multiple of the cache's KV heads (GQA).
* :meth:`truncate` rolls rows back to shorter lengths (speculative decoding's rollback to
  the accepted length, dropping a padded tail). Nothing has to be erased: tokens past a
  row's length are never read. It also abandons a pass begun and not committed.
* ``begin`` is where capacity is checked (a contiguous cache) or blocks are allocated (a
  paged cache); it raises ``ValueError`` rather than writing out of bounds. Between
  ``begin`` and ``commit`` only device tensors change, so the layers' work can be captured
  in a CUDA graph and replayed (see ``labkit.decoding``).

* A cache whose ``fuses_rope`` is true rotates the keys itself, as it writes them (notebook
  04's fused write): the model hands ``append`` *unrotated* keys and rotates only ``q``.

Implementations: :class:`labkit.kvcache.contiguous.ContiguousKVCache` (preallocated to a
maximum length; the baseline), :class:`~labkit.kvcache.contiguous.FusedRopeKVCache` (the
same, RoPE fused into its write) and ``labkit.kvcache.paged`` (block tables).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class KVCache(ABC):
    """Per-layer keys and values of a batch of sequences (see the module docstring)."""

    num_layers: int  # layers the model has
    batch_size: int  # rows B
    num_kv_heads: int  # Hkv
    head_dim: int  # D
    dtype: torch.dtype  # of keys and values (the model's dtype)
    device: torch.device
    lengths: torch.Tensor  # [B] int32 on ``device``: tokens committed per row; updated in place
    fuses_rope: bool = False  # True: ``append`` takes unrotated keys and rotates them at their positions

    @abstractmethod
    def begin(self, num_new: int) -> torch.Tensor:
        """Start a forward pass over ``num_new`` tokens per row; return positions [B, num_new] int64."""

    @abstractmethod
    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write the pass's new keys/values, k, v: [B, Hkv, S, D] in ``dtype``, at each row's positions."""

    @abstractmethod
    def attend(self, layer: int, q: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
        """Causal attention of q [B, Hq, S, D] over the row's cached and new tokens; returns [B, Hq, S, D]."""

    @abstractmethod
    def commit(self) -> None:
        """End the pass: every row's length grows by the pass's ``num_new``."""

    @abstractmethod
    def truncate(self, lengths) -> None:
        """Roll rows back: ``lengths`` is an int (every row) or B ints / a [B] tensor, each ≤ the row's length."""

    @abstractmethod
    def host_lengths(self) -> list[int]:
        """The committed lengths as Python ints (no device sync)."""

    def reset(self) -> None:
        """Empty every row."""
        self.truncate(0)


def as_length_list(lengths, batch_size: int) -> list[int]:
    """Normalise ``lengths`` (an int, a sequence, or a [B] tensor) to B Python ints."""
    if isinstance(lengths, int):
        return [lengths] * batch_size
    if isinstance(lengths, torch.Tensor):
        lengths = lengths.tolist()
    out = [int(n) for n in lengths]
    if len(out) != batch_size:
        raise ValueError(f"lengths must give {batch_size} rows, got {len(out)}")
    return out
