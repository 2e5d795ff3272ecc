"""KV caches behind one protocol (:class:`KVCache`, see :mod:`labkit.kvcache.base`)."""

from labkit.kvcache.allocator import BlockAllocator, DoubleFree, OutOfBlocks
from labkit.kvcache.base import KVCache
from labkit.kvcache.contiguous import ContiguousKVCache, FusedRopeKVCache
from labkit.kvcache.paged import PagedKVCache, UnknownSequence
from labkit.kvcache.paged_batch import PagedBatch

__all__ = ["KVCache", "ContiguousKVCache", "FusedRopeKVCache", "BlockAllocator", "DoubleFree", "OutOfBlocks",
           "PagedBatch", "PagedKVCache", "UnknownSequence"]
