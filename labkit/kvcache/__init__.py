"""KV caches behind one protocol (:class:`KVCache`, see :mod:`labkit.kvcache.base`)."""

from labkit.kvcache.base import KVCache
from labkit.kvcache.contiguous import ContiguousKVCache

__all__ = ["KVCache", "ContiguousKVCache"]
