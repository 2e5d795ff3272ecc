"""Checks for notebook 05: a paged KV cache (allocator, block-table lookup, paged kernel)."""

from __future__ import annotations

import math
import random

import torch

from labkit import runtime
from labkit.checks._guard import reject_labkit
from labkit.checks.core import TOLERANCE, assert_close, assert_equal, fresh_seed, poisoned, run_check
from labkit.kvcache.allocator import DoubleFree, OutOfBlocks

# ---------------------------------------------------------------------------------------------
# 05.allocator: allocate(n) -> list of ids, share(block), free(block), refcount(block), num_free()


def _drive(student_cls, rng: random.Random, num_blocks: int, steps: int) -> None:
    """Random allocate/share/free, each step compared with exact bookkeeping kept here."""
    yours = student_cls(num_blocks)
    refs = [0] * num_blocks  # the expected reference count of every block
    owned: list[int] = []  # one entry per owner: a block shared twice appears three times
    for step in range(steps):
        op = rng.random()
        if op < 0.45 or not owned:
            n = rng.randint(0, 3)
            if n > refs.count(0):
                continue
            got = list(yours.allocate(n))
            if len(got) != n or len(set(got)) != n:
                raise AssertionError(f"step {step}: allocate({n}) returned {got}: expected {n} distinct block ids")
            for b in got:
                if not 0 <= b < num_blocks:
                    raise AssertionError(f"step {step}: allocate({n}) returned block {b}, not in [0, {num_blocks})")
                if refs[b]:
                    raise AssertionError(f"step {step}: allocate({n}) returned block {b}, which is still in use")
                refs[b] = 1
            owned += got
            what = f"allocate({n})"
        elif op < 0.65:
            b = rng.choice(owned)
            yours.share(b)
            refs[b] += 1
            owned.append(b)
            what = f"share({b})"
        else:
            b = owned.pop(rng.randrange(len(owned)))
            yours.free(b)
            refs[b] -= 1
            what = f"free({b})"
        assert_equal([yours.refcount(b) for b in range(num_blocks)], refs,
                     what=f"reference counts (indexed by block) after step {step}, {what}")
        if yours.num_free() != refs.count(0):
            raise AssertionError(f"step {step}, {what}: num_free() is {yours.num_free()}, expected {refs.count(0)}")


def check_allocator(student_cls) -> None:
    """``student_cls(num_blocks)`` must behave as a reference-counted block allocator."""
    reject_labkit(student_cls, '05.allocator', SOLUTIONS)
    rng = random.Random(fresh_seed())

    def distinct():
        n = rng.randint(9, 40)
        a = student_cls(n)
        got = list(a.allocate(n))
        if sorted(got) != list(range(n)):
            raise AssertionError(f"allocate({n}) on a fresh pool of {n} returned {sorted(got)}: expected every block once")
        if a.num_free() != 0:
            raise AssertionError(f"after allocating all {n} blocks, num_free() is {a.num_free()}, expected 0")

    def out_of_blocks():
        n = rng.randint(4, 20)
        a = student_cls(n)
        a.allocate(n - 2)
        try:
            a.allocate(3)
        except OutOfBlocks:
            pass
        else:
            raise AssertionError("allocate(3) with 2 free blocks returned instead of raising OutOfBlocks")
        if a.num_free() != 2:
            raise AssertionError(f"a failed allocate must take nothing: num_free() is {a.num_free()}, expected 2")
        if len(set(a.allocate(2))) != 2:
            raise AssertionError("the 2 blocks left could not be allocated after the failed request")

    def refcounts():
        n = rng.randint(6, 16)
        _drive(student_cls, rng, n, steps=60)

    def last_owner():
        a = student_cls(4)
        b = a.allocate(1)[0]
        a.share(b)
        a.share(b)
        for left in (2, 1):
            a.free(b)
            if a.refcount(b) != left or a.num_free() != 3:
                raise AssertionError(f"block {b} with {left} owner(s) left: refcount {a.refcount(b)}, num_free() "
                                     f"{a.num_free()}; expected refcount {left} and 3 free (it is still in use)")
        a.free(b)
        if a.refcount(b) != 0 or a.num_free() != 4:
            raise AssertionError(f"after its last owner freed it, block {b} has refcount {a.refcount(b)} and "
                                 f"num_free() is {a.num_free()}; expected 0 and 4")

    def double_free():
        a = student_cls(3)
        b = a.allocate(1)[0]
        a.free(b)
        try:
            a.free(b)
        except DoubleFree:
            return
        raise AssertionError(f"freeing block {b} a second time did not raise DoubleFree")

    def no_leak():
        n = rng.randint(5, 12)
        a = student_cls(n)
        held = []
        for _ in range(30):
            if held and rng.random() < 0.5:
                a.free(held.pop(rng.randrange(len(held))))
            elif a.num_free():
                b = a.allocate(1)[0]
                held.append(b)
                if rng.random() < 0.3:
                    a.share(b)
                    held.append(b)
        for b in held:
            a.free(b)
        if a.num_free() != n or any(a.refcount(b) for b in range(n)):
            raise AssertionError(f"after every owner freed its blocks: num_free() {a.num_free()} of {n}, "
                                 f"refcounts {[a.refcount(b) for b in range(n)]}: blocks leaked")
        if sorted(a.allocate(n)) != list(range(n)):
            raise AssertionError("after freeing everything, the whole pool could not be allocated again")

    run_check("05.allocator", [
        ("allocates distinct free blocks", distinct),
        ("out of blocks raises OutOfBlocks and takes nothing", out_of_blocks),
        ("refcounts exact under random allocate/share/free", refcounts),
        ("a shared block is free only after its last owner frees it", last_owner),
        ("freeing a free block raises DoubleFree", double_free),
        ("no leaked blocks", no_leak),
    ])


# ---------------------------------------------------------------------------------------------
# 05.slot_lookup: slot_of(block_table, positions, block_size) -> slots


def _lookup_case(student_fn, rng: random.Random, *, block_size: int, length: int, positions=None) -> None:
    num_blocks = math.ceil(length / block_size) + rng.randint(0, 6)
    table = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(rng.randrange(1 << 30)))
    table = table[: math.ceil(length / block_size)]
    pos = torch.arange(length) if positions is None else torch.tensor(positions, dtype=torch.long)
    want = table[pos // block_size] * block_size + pos % block_size
    got = student_fn(table.clone(), pos.clone(), block_size)
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"expected a torch.Tensor of slots, got {type(got).__name__}")
    if got.dtype != torch.int64:
        raise AssertionError(f"expected int64 slots, got {got.dtype}")
    assert_equal(got, want, what=f"slots (block_size={block_size}, table={table.tolist()})")


def _paged_equals_contiguous(student_fn, rng: random.Random) -> None:
    """Write a sequence's keys through your slots; reading them back in order must give the sequence."""
    block_size, length, D = rng.choice([4, 8, 16]), rng.randint(20, 70), 8
    num_blocks = math.ceil(length / block_size) + 5
    table = torch.randperm(num_blocks)[: math.ceil(length / block_size)]
    keys = torch.randn(length, D)
    pool = poisoned((num_blocks * block_size, D), torch.float32)  # one row per slot
    pool[student_fn(table, torch.arange(length), block_size)] = keys
    pos = torch.arange(length)
    read = pool.view(num_blocks, block_size, D)[table[pos // block_size], pos % block_size]
    assert_close(read, keys, rtol=0.0, what="keys read back through the block table")


def check_slot_lookup(student_fn) -> None:
    """``student_fn(block_table [n] int64, positions [m] int64, block_size) -> slots [m] int64``."""
    reject_labkit(student_fn, '05.slot_lookup', SOLUTIONS)
    rng = random.Random(fresh_seed())
    run_check("05.slot_lookup", [
        ("position 0 (T = 1)", lambda: _lookup_case(student_fn, rng, block_size=16, length=1)),
        ("T shorter than one block", lambda: _lookup_case(student_fn, rng, block_size=16, length=rng.randint(2, 15))),
        ("T not a multiple of the block", lambda: _lookup_case(student_fn, rng, block_size=8, length=8 * rng.randint(2, 9) + rng.randint(1, 7))),
        ("first and last token of every block", lambda: _lookup_case(
            student_fn, rng, block_size=4, length=40, positions=[p for i in range(10) for p in (4 * i, 4 * i + 3)])),
        ("block sizes 1, 32 and 64", lambda: [_lookup_case(student_fn, rng, block_size=bs, length=rng.randint(1, 200))
                                              for bs in (1, 32, 64)]),
        ("paged == contiguous", lambda: _paged_equals_contiguous(student_fn, rng)),
    ])


# ---------------------------------------------------------------------------------------------
# 05.paged_kernel: paged_attention(q, k_pool, v_pool, block_tables, lengths, out) -> out


def _kernel_case(student_fn, rng: random.Random, *, lengths, block_size: int = 8, group: int = 1,
                 dtype=torch.float32, shuffle: bool = True, D: int = 16, kv_heads: int | None = None) -> None:
    from labkit.kvcache.paged_attention import paged_reference

    dev = runtime.device()
    B, Hkv = len(lengths), kv_heads or rng.choice([1, 2])
    width = max(math.ceil(n / block_size) for n in lengths)
    num_blocks = B * width + rng.randint(1, 5)
    order = torch.randperm(num_blocks) if shuffle else torch.arange(num_blocks)
    tables = order[: B * width].view(B, width).to(dev, torch.int32)
    k_pool = torch.randn(num_blocks, Hkv, block_size, D).to(dev, dtype)
    v_pool = torch.randn(num_blocks, Hkv, block_size, D).to(dev, dtype)
    q = torch.randn(B, Hkv * group, D).to(dev, dtype)
    lens = torch.tensor(lengths, dtype=torch.int32, device=dev)
    out = poisoned(q.shape, dtype, dev)
    try:
        got = student_fn(q, k_pool, v_pool, tables, lens, out)
    except Exception as exc:  # noqa: BLE001 - a stub inside a kernel surfaces wrapped in Triton's errors
        if "NotImplementedError" in repr(exc) or "your code here" in str(exc):
            raise NotImplementedError("Exercise 05.paged_kernel: your code here") from exc
        raise
    got = out if got is None else got
    want = paged_reference(q, k_pool, v_pool, tables, lens)
    assert_close(got, want, rtol=TOLERANCE[dtype],
                 what=f"output (lengths {lengths}, block_size {block_size}, {Hkv * group} query / {Hkv} KV heads)")


def check_paged_kernel(student_fn) -> None:
    """``student_fn(q [B, Hq, D], k_pool, v_pool [N, Hkv, BS, D], block_tables [B, W] int32,
    lengths [B] int32, out [B, Hq, D])`` must write paged decode attention into ``out``."""
    reject_labkit(student_fn, '05.paged_kernel', SOLUTIONS)
    rng = random.Random(fresh_seed())
    run_check("05.paged_kernel", [
        ("paged == contiguous (blocks in order)", lambda: _kernel_case(student_fn, rng, lengths=[24], shuffle=False)),
        ("blocks shuffled in the pool", lambda: _kernel_case(student_fn, rng, lengths=[rng.randint(17, 40)])),
        ("T not a multiple of the block", lambda: _kernel_case(student_fn, rng, lengths=[8 * rng.randint(1, 4) + rng.randint(1, 7)])),
        ("T shorter than one block", lambda: _kernel_case(student_fn, rng, lengths=[rng.randint(2, 7)])),
        ("T = 1", lambda: _kernel_case(student_fn, rng, lengths=[1])),
        ("ragged batch (a length per sequence)", lambda: _kernel_case(
            student_fn, rng, lengths=[rng.randint(1, 9), rng.randint(10, 40), rng.randint(1, 40)])),
        ("GQA (4 query heads per KV head)", lambda: _kernel_case(student_fn, rng, lengths=[rng.randint(9, 30)], group=4,
                                                                   kv_heads=2)),
        ("block sizes 4 and 16", lambda: [_kernel_case(student_fn, rng, lengths=[rng.randint(5, 40)], block_size=bs)
                                          for bs in (4, 16)]),
        ("fp16 inputs", lambda: _kernel_case(student_fn, rng, lengths=[rng.randint(5, 40)], dtype=torch.float16)),
    ])


# The labkit objects that implement each exercise: an answer that is one of them fails.
SOLUTIONS = {
    '05.allocator': ('labkit.kvcache.allocator:BlockAllocator',),
    '05.slot_lookup': ('labkit.kvcache.paged:PagedKVCache.slots', 'labkit.kvcache.paged:PagedKVCache'),
    '05.paged_kernel': ('labkit.kvcache.paged_attention:paged_decode', 'labkit.kvcache.paged_attention:paged_reference', 'labkit.kvcache.paged_attention:gather_paged', 'labkit.attention.reference:reference_decode'),
}
