"""The paged KV cache: allocator, block tables, copy-on-write, the paged Triton kernel, the
workload generator and the memory-waste accounting (sim mode, small sizes)."""

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, multiple, rule

from labkit.attention import masked_attention, reference_decode
from labkit.checks.core import fresh_seed, rel_error
from labkit.kvcache import (BlockAllocator, ContiguousKVCache, DoubleFree, OutOfBlocks, PagedBatch, PagedKVCache,
                            UnknownSequence)
from labkit.kvcache.paged_attention import gather_paged, paged_decode, paged_reference
from labkit.kvcache.waste import memory_waste
from labkit.kvcache.workload import SMALL_MIX, Request, generate_workload, poisson_arrivals, summarize

ROOT = Path(__file__).resolve().parents[1]


# --- allocator -----------------------------------------------------------------------------------
def test_allocator_hands_out_distinct_blocks_and_counts_owners():
    a = BlockAllocator(6)
    got = a.allocate(4)
    assert sorted(got) == sorted(set(got)) and all(0 <= b < 6 for b in got)
    assert [a.refcount(b) for b in got] == [1] * 4 and a.num_free == 2 and a.num_used == 4
    a.share(got[0])
    assert a.refcount(got[0]) == 2 and a.stats().shared == 1
    assert a.free(got[0]) is False and a.refcount(got[0]) == 1  # one owner left: still used
    assert a.free(got[0]) is True and a.num_free == 3
    assert a.allocate(1) == [got[0]]  # the block freed last is handed out first


def test_out_of_blocks_is_distinct_and_takes_nothing():
    a = BlockAllocator(3)
    a.allocate(2)
    with pytest.raises(OutOfBlocks, match="asked for 2 block") as info:
        a.allocate(2)
    assert (info.value.requested, info.value.free, info.value.total) == (2, 1, 3)
    assert not isinstance(info.value, ValueError)  # a scheduler catches it apart from bad input
    assert a.num_free == 1 and a.allocate(1)


def test_allocator_misuse_raises_naming_the_block():
    a = BlockAllocator(4)
    (b,) = a.allocate(1)
    a.free(b)
    with pytest.raises(DoubleFree, match=f"block {b} is already free"):
        a.free(b)
    with pytest.raises(ValueError, match="only a used block can be shared"):
        a.share(b)
    with pytest.raises(ValueError, match=r"block must be an int in \[0, 4\)"):
        a.free(4)
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        a.allocate(-1)
    with pytest.raises(ValueError, match="num_blocks must be a positive int"):
        BlockAllocator(0)


# --- the paged cache: sequences, copy-on-write, errors -------------------------------------------
def _cache(**kw):
    args = dict(num_blocks=8, block_size=4, dtype=torch.float32)
    args.update(kw)
    return PagedKVCache(2, 2, 8, **args)


def _fill(cache, seq, n, gen):
    """Extend ``seq`` by n tokens and write random K/V for every layer; return them [L, Hkv, n, D]."""
    slots = cache.extend(seq, n)
    k = torch.randn(cache.num_layers, n, cache.num_kv_heads, cache.head_dim, generator=gen)
    v = torch.randn(cache.num_layers, n, cache.num_kv_heads, cache.head_dim, generator=gen)
    for layer in range(cache.num_layers):
        cache.write(layer, slots, k[layer], v[layer])
    return k.transpose(1, 2), v.transpose(1, 2)


def test_fork_shares_blocks_and_copies_the_partial_last_block_on_write():
    gen = torch.Generator().manual_seed(0)
    cache = _cache()
    parent = cache.new_sequence()
    kp, vp = _fill(cache, parent, 6, gen)  # blocks: one full (4), one holding 2 of 4
    child = cache.fork(parent)
    assert cache.block_table(child) == cache.block_table(parent) and cache.stats().shared_blocks == 2
    kc, vc = _fill(cache, child, 1, gen)  # writes into the shared partial block: copy it first
    assert cache.block_table(child)[0] == cache.block_table(parent)[0]  # the full block stays shared
    assert cache.block_table(child)[1] != cache.block_table(parent)[1]
    for layer in range(2):
        k, v = cache.gather(layer, parent)
        assert torch.equal(k, kp[layer]) and torch.equal(v, vp[layer])  # the parent is untouched
        k, v = cache.gather(layer, child)
        assert torch.equal(k, torch.cat([kp[layer], kc[layer]], 1)) and torch.equal(v, torch.cat([vp[layer], vc[layer]], 1))
    cache.check_invariants()
    s = cache.stats()
    assert (s.used_blocks, s.shared_blocks, s.table_blocks, s.saved_by_sharing) == (3, 1, 4, 1)


def test_fork_at_a_block_boundary_copies_nothing():
    cache = _cache()
    parent = cache.new_sequence()
    _fill(cache, parent, 8, torch.Generator().manual_seed(1))
    child = cache.fork(parent)
    assert cache.blocks_needed(child, 1) == 1  # a new block, no copy
    cache.extend(child, 1)
    assert cache.block_table(child)[:2] == cache.block_table(parent)
    cache.check_invariants()


def test_freed_and_unknown_sequences_raise():
    cache = _cache()
    seq = cache.new_sequence()
    cache.extend(seq, 5)
    cache.free(seq)
    for call in (lambda: cache.extend(seq, 1), lambda: cache.fork(seq), lambda: cache.free(seq),
                 lambda: cache.length(seq), lambda: cache.gather(0, seq), lambda: cache.tables([seq])):
        with pytest.raises(UnknownSequence, match=f"sequence {seq} was freed"):
            call()
    with pytest.raises(UnknownSequence, match="sequence 99 was never created"):
        cache.extend(99, 1)
    assert cache.allocator.num_free == 8


def test_sequences_can_be_named_by_request_ids():
    cache = _cache()
    assert cache.new_sequence("req-7") == "req-7" and cache.new_sequence() == 0
    with pytest.raises(ValueError, match="sequence 'req-7' already exists"):
        cache.new_sequence("req-7")
    cache.extend("req-7", 5)
    assert cache.fork("req-7", "req-7/1") == "req-7/1" and cache.fork("req-7") == 1
    cache.free("req-7")
    with pytest.raises(UnknownSequence, match="'req-7' was freed"):
        cache.extend("req-7", 1)
    assert cache.new_sequence("req-7") == "req-7"  # a preempted request comes back under its id
    assert cache.length("req-7") == 0 and cache.length("req-7/1") == 5
    cache.check_invariants()


def test_out_of_blocks_in_extend_changes_nothing():
    cache = _cache(num_blocks=3)
    a = cache.new_sequence()
    cache.extend(a, 6)
    b = cache.fork(a)
    before = (cache.block_table(a), cache.block_table(b), cache.length(b), cache.allocator.refcounts())
    with pytest.raises(OutOfBlocks):
        cache.extend(b, 7)  # a copy-on-write block plus two new ones: 3 > 1 free
    assert before == (cache.block_table(a), cache.block_table(b), cache.length(b), cache.allocator.refcounts())
    cache.check_invariants()


def test_cache_argument_errors():
    with pytest.raises(ValueError, match="block_size must be a power of two"):
        _cache(block_size=6)
    cache = _cache()
    seq = cache.new_sequence()
    slots = cache.extend(seq, 3)
    with pytest.raises(ValueError, match=r"k and v must have shape \[3, 2, 8\]"):
        cache.write(0, slots, torch.randn(3, 2, 4), torch.randn(3, 2, 4))
    with pytest.raises(TypeError, match="cache's dtype"):
        cache.write(0, slots, torch.randn(3, 2, 8).half(), torch.randn(3, 2, 8).half())
    with pytest.raises(ValueError, match="can't truncate it to 4"):
        cache.truncate(seq, 4)
    with pytest.raises(ValueError, match=r"positions must be in \[0, 3\)"):
        cache.slots(seq, torch.tensor([3]))


def test_truncate_releases_whole_blocks_past_the_new_length():
    cache = _cache()
    seq = cache.new_sequence()
    cache.extend(seq, 10)
    cache.truncate(seq, 5)
    assert len(cache.block_table(seq)) == 2 and cache.allocator.num_free == 6
    cache.truncate(seq, 0)
    assert cache.block_table(seq) == [] and cache.allocator.num_free == 8
    cache.check_invariants()


# --- the paged kernel ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,bs,group,lengths,splits,block_n", [
    (torch.float32, 4, 1, [1], None, None),  # T = 1
    (torch.float32, 8, 2, [5, 19, 8], 3, 4),  # shorter than a block, not a multiple, exactly one
    (torch.float16, 16, 4, [33, 2], 2, 16),  # GQA, fp16, more splits than a short row can fill
    (torch.float32, 4, 1, [23], 17, 4),  # more splits than tiles: empty splits must weigh nothing
])
def test_paged_decode_matches_float64_reference(dtype, bs, group, lengths, splits, block_n):
    gen = torch.Generator().manual_seed(sum(lengths) + bs)
    B, Hkv, D = len(lengths), 2, 16
    width = max(-(-n // bs) for n in lengths) + 1  # wider than needed: padding is never read
    num_blocks = B * width + 3
    k_pool = torch.randn(num_blocks, Hkv, bs, D, generator=gen).to(dtype)
    v_pool = torch.randn(num_blocks, Hkv, bs, D, generator=gen).to(dtype)
    tables = torch.randperm(num_blocks, generator=gen)[: B * width].view(B, width).int()
    lens = torch.tensor(lengths, dtype=torch.int32)
    q = torch.randn(B, Hkv * group, D, generator=gen).to(dtype)
    out = torch.full_like(q, float("nan"))
    paged_decode(q, k_pool, v_pool, tables, lens, out=out, num_splits=splits, block_n=block_n)
    expected = paged_reference(q, k_pool, v_pool, tables, lens)
    assert rel_error(out, expected) <= (2e-3 if dtype == torch.float16 else 1e-5)
    # the reference itself: gathering through the tables gives each row's tokens in order
    k = gather_paged(k_pool, tables, lens)
    row = tables[0, 0].item()
    assert torch.equal(k[0, :, : min(bs, lengths[0])], k_pool[row, :, : min(bs, lengths[0])])


def _paged_inputs(**over):
    args = dict(q=torch.randn(2, 4, 16), k_pool=torch.randn(6, 2, 4, 16), v_pool=torch.randn(6, 2, 4, 16),
                block_tables=torch.zeros(2, 3, dtype=torch.int32), lengths=torch.tensor([3, 12], dtype=torch.int32))
    args.update(over)
    return args


@pytest.mark.parametrize("over,error,message", [
    (dict(block_tables=torch.zeros(2, 3, dtype=torch.int64)), TypeError, "block_tables has dtype int64"),
    (dict(lengths=torch.tensor([3, 12])), TypeError, "lengths has dtype int64"),
    (dict(k_pool=torch.randn(6, 2, 4, 16).half()), TypeError, "k_pool has dtype float16"),
    (dict(v_pool=torch.randn(6, 2, 8, 16)), ValueError, "v_pool must have k_pool's shape"),
    (dict(q=torch.randn(2, 3, 16)), ValueError, r"q's heads \(3\) must be a multiple"),
    (dict(k_pool=torch.randn(6, 2, 6, 16), v_pool=torch.randn(6, 2, 6, 16)), ValueError, "must be a power of two"),
    (dict(lengths=torch.tensor([0, 12], dtype=torch.int32)), ValueError, r"lengths must be in \[1, 12\]"),
    (dict(lengths=torch.tensor([3, 13], dtype=torch.int32)), ValueError, r"lengths must be in \[1, 12\]"),
    (dict(block_tables=torch.tensor([[0, 0, 0], [1, 2, 6]], dtype=torch.int32)), ValueError,
     "block_tables points outside the pool"),
    (dict(block_tables=torch.zeros(3, 3, dtype=torch.int32)), ValueError, r"block_tables must be \[2, max_blocks\]"),
    (dict(q=torch.randn(2, 16)), ValueError, "q must have 3 dimensions"),
    (dict(q=torch.randn(2, 16, 4).transpose(1, 2)), ValueError, "q must be contiguous"),
])
def test_paged_decode_bad_input_names_the_argument(over, error, message):
    with pytest.raises(error, match=message):
        paged_decode(**_paged_inputs(**over))


def test_paged_decode_ignores_table_entries_past_each_length():
    # Entries past a row's blocks may be anything (here out of the pool): they are never read.
    tables = torch.tensor([[0, 99, -5], [1, 2, 3]], dtype=torch.int32)
    args = _paged_inputs(block_tables=tables)
    out = paged_decode(**args)
    assert rel_error(out, paged_reference(**args)) <= 1e-5


def test_paged_kernel_compiles_for_the_t4():
    # The paged path of the shared decode kernel, as paged_decode launches it on a T4 (reductions)
    # and on sm_90 (GQA through tl.dot), at block size 16.
    from labkit.testing.attend_builds import attend_build
    from labkit.testing.t4 import compile_triton_many_for_t4

    requests = [attend_build(dt, 128, g, True, 8192, cc=cc, paged=True)
                for cc, dt, g in (((7, 5), "fp16", 1), ((7, 5), "fp32", 4), ((7, 5), "fp16", 8), ((9, 0), "fp16", 4))]
    builds = compile_triton_many_for_t4(requests, ccs=[(7, 5)] * 3 + [(9, 0)])
    assert all(b.cubin_bytes > 0 for b in builds)
    assert all(b.shared_bytes <= 64 * 1024 for b in builds[:3])


# --- the stateful property test --------------------------------------------------------------------
LAYERS, HKV, D, BS, BLOCKS = 2, 2, 8, 4, 12


class PagedCacheMachine(RuleBasedStateMachine):
    """Random new/append/fork/truncate/free sequences against a shadow of plain tensors.

    After every step: the bookkeeping is exact (no block leaked or owned twice, reference counts
    equal owners), every sequence reads back exactly its own tokens, and paged attention over
    all of them equals float64 attention over the shadow's contiguous copies.
    """

    seqs = Bundle("seqs")

    @initialize()
    def setup(self):
        self.cache = PagedKVCache(LAYERS, HKV, D, num_blocks=BLOCKS, block_size=BS, dtype=torch.float32)
        self.shadow = {}  # seq -> (k, v), each [LAYERS, HKV, T, D]
        self.freed = []
        self.gen = torch.Generator().manual_seed(0)
        self.steps = 0

    def _append(self, seq, n):
        """Grow ``seq`` by n written tokens; on OutOfBlocks check that nothing changed."""
        before = (self.cache.block_table(seq), self.cache.allocator.refcounts(), self.cache.length(seq))
        try:
            slots = self.cache.extend(seq, n)
        except OutOfBlocks:
            assert self.cache.blocks_needed(seq, n) > self.cache.allocator.num_free
            assert before == (self.cache.block_table(seq), self.cache.allocator.refcounts(), self.cache.length(seq))
            return False
        k = torch.randn(LAYERS, n, HKV, D, generator=self.gen)
        v = torch.randn(LAYERS, n, HKV, D, generator=self.gen)
        dev = self.cache.device  # the GPU in gpu mode: writes and kernel run there; the shadow stays on the CPU
        for layer in range(LAYERS):
            self.cache.write(layer, slots, k[layer].to(dev), v[layer].to(dev))
        old_k, old_v = self.shadow[seq]
        self.shadow[seq] = (torch.cat([old_k, k.transpose(1, 2)], 2), torch.cat([old_v, v.transpose(1, 2)], 2))
        return True

    @rule(target=seqs, n=st.integers(1, 9))
    def new(self, n):
        seq = self.cache.new_sequence()
        self.shadow[seq] = (torch.empty(LAYERS, HKV, 0, D), torch.empty(LAYERS, HKV, 0, D))
        if not self._append(seq, n):
            self.cache.free(seq)
            del self.shadow[seq]
            return multiple()
        return seq

    @rule(seq=seqs, n=st.integers(1, 6))
    def append(self, seq, n):
        self._append(seq, n)

    @rule(target=seqs, parent=seqs)
    def fork(self, parent):
        child = self.cache.fork(parent)
        self.shadow[child] = tuple(t.clone() for t in self.shadow[parent])
        return child

    @rule(target=seqs, parent=seqs, n=st.integers(1, 5), m=st.integers(1, 5))
    def fork_and_diverge(self, parent, n, m):
        # Both write into the partly filled block they share: each must keep its own tokens.
        child = self.fork(parent)
        self._append(parent, n)
        self._append(child, m)
        return child

    @rule(seq=seqs, data=st.data())
    def truncate(self, seq, data):
        n = data.draw(st.integers(0, self.cache.length(seq)))
        self.cache.truncate(seq, n)
        self.shadow[seq] = tuple(t[:, :, :n] for t in self.shadow[seq])

    @rule(seq=consumes(seqs))
    def free(self, seq):
        self.cache.free(seq)
        del self.shadow[seq]
        self.freed.append(seq)

    @rule(data=st.data())
    def use_freed(self, data):
        if self.freed:
            seq = data.draw(st.sampled_from(self.freed))
            with pytest.raises(UnknownSequence):
                self.cache.extend(seq, 1)
            with pytest.raises(UnknownSequence):
                self.cache.free(seq)

    @invariant()
    def bookkeeping_is_exact(self):
        if not hasattr(self, "cache"):
            return
        self.cache.check_invariants()  # refcounts == owners, free list == unowned blocks, table sizes
        s = self.cache.stats()
        assert s.used_blocks + self.cache.allocator.num_free == BLOCKS
        assert s.used_blocks <= s.table_blocks and s.tokens == sum(t[0].shape[2] for t in self.shadow.values())
        for seq, (k, v) in self.shadow.items():
            for layer in range(LAYERS):
                gk, gv = self.cache.gather(layer, seq)
                assert torch.equal(gk.cpu(), k[layer]) and torch.equal(gv.cpu(), v[layer]), \
                    f"sequence {seq} reads back wrong"

    @invariant()
    def paged_attention_equals_contiguous(self):
        if not hasattr(self, "cache"):
            return
        live = [s for s in self.shadow if self.cache.length(s) > 0]
        if not live:
            return
        self.steps += 1
        layer = self.steps % LAYERS
        group = (1, 2)[self.steps % 2]
        q = torch.randn(len(live), HKV * group, D, generator=self.gen).to(self.cache.device)
        tables, lengths = self.cache.tables(live)
        out = paged_decode(q, self.cache.k[layer], self.cache.v[layer], tables, lengths,
                           num_splits=(1, 2, 3)[self.steps % 3], block_n=(8, 16)[self.steps % 2])
        T = int(lengths.max())
        k = torch.zeros(len(live), HKV, T, D)
        v = torch.zeros(len(live), HKV, T, D)
        for i, s in enumerate(live):
            n = self.cache.length(s)
            k[i, :, :n], v[i, :, :n] = self.shadow[s][0][layer], self.shadow[s][1][layer]
        expected = reference_decode(q.cpu(), k, v, lengths=lengths.cpu())
        assert rel_error(out.cpu(), expected) <= 1e-5


PagedCacheMachine.TestCase.settings = settings(max_examples=10, stateful_step_count=10, deadline=None,
                                                suppress_health_check=[HealthCheck.too_slow], derandomize=True)
TestPagedCache = PagedCacheMachine.TestCase


# --- the cache protocol: the model runs over a paged cache --------------------------------------
def test_paged_batch_matches_contiguous_cache_through_the_protocol():
    torch.manual_seed(0)
    L, B, Hkv, Hq, Dh = 2, 3, 2, 4, 16
    contiguous = ContiguousKVCache(L, B, Hkv, Dh, 48)
    paged = PagedBatch.create(L, B, Hkv, Dh, 48, block_size=8)
    for S in (5, 1, 1, 3, 1):
        assert torch.equal(contiguous.begin(S), paged.begin(S))
        for layer in range(L):
            k, v, q = torch.randn(B, Hkv, S, Dh), torch.randn(B, Hkv, S, Dh), torch.randn(B, Hq, S, Dh)
            contiguous.append(layer, k, v)
            paged.append(layer, k, v)
            assert rel_error(paged.attend(layer, q), contiguous.attend(layer, q)) <= 1e-5
        contiguous.commit()
        paged.commit()
    assert paged.host_lengths() == contiguous.host_lengths() == [11] * 3
    assert torch.equal(paged.lengths, contiguous.lengths)
    paged.truncate([2, 9, 4])
    contiguous.truncate([2, 9, 4])
    contiguous.begin(1)
    paged.begin(1)
    k, v, q = torch.randn(B, Hkv, 1, Dh), torch.randn(B, Hkv, 1, Dh), torch.randn(B, Hq, 1, Dh)
    contiguous.append(0, k, v)
    paged.append(0, k, v)
    assert rel_error(paged.attend(0, q), contiguous.attend(0, q)) <= 1e-5
    paged.cache.check_invariants()
    assert paged.memory_bytes() < contiguous.memory_bytes()


def test_paged_batch_out_of_blocks_before_touching_any_row():
    batch = PagedBatch.create(1, 2, 1, 8, 16, block_size=4, num_blocks=3)
    batch.begin(4)
    batch.commit()
    with pytest.raises(OutOfBlocks):
        batch.begin(4)  # each row needs one more block; one is free
    assert [batch.cache.length(s) for s in batch.seqs] == [4, 4]
    with pytest.raises(RuntimeError, match="commit\\(\\) without begin"):
        batch.commit()


def test_static_shapes_update_tensors_in_place_for_cuda_graphs():
    torch.manual_seed(1)
    contiguous = ContiguousKVCache(1, 2, 2, 16, 24, static_shapes=True)
    paged = PagedBatch.create(1, 2, 2, 16, 24, block_size=4, static_shapes=True)
    tables, lengths = paged.block_tables.data_ptr(), paged.lengths.data_ptr()
    for S in (6, 1, 3, 1):
        contiguous.begin(S)
        paged.begin(S)
        k, v, q = torch.randn(2, 2, S, 16), torch.randn(2, 2, S, 16), torch.randn(2, 4, S, 16)
        contiguous.append(0, k, v)
        paged.append(0, k, v)
        assert rel_error(paged.attend(0, q), contiguous.attend(0, q)) <= 1e-5
        contiguous.commit()
        paged.commit()
    assert (paged.block_tables.data_ptr(), paged.lengths.data_ptr()) == (tables, lengths)
    assert paged.block_tables.shape == (2, 6)
    with pytest.raises(ValueError, match="at most max_len=24 tokens per row"):
        paged.begin(14)
    with pytest.raises(ValueError, match="static_shapes=True needs max_len"):
        PagedBatch(paged.cache, paged.seqs, static_shapes=True)


def test_model_generates_the_same_over_paged_and_contiguous_caches():
    from labkit.model import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=64)).eval()
    prompt = torch.randint(0, 40, (2, 7))
    outs = []
    for cache in (model.new_cache(2, 64), PagedBatch.create(2, 2, 2, 8, 64, block_size=4)):
        with torch.no_grad():
            logits = [model(prompt, cache)[:, -1]]
            for _ in range(4):
                logits.append(model(logits[-1].argmax(-1, keepdim=True), cache)[:, -1])
        outs.append(torch.stack(logits))
    assert rel_error(outs[1], outs[0]) <= 1e-5


# --- workload and waste --------------------------------------------------------------------------
def test_workload_is_seeded_mixed_and_within_bounds():
    a, b = generate_workload(300, seed=3, rate=5.0), generate_workload(300, seed=3, rate=5.0)
    assert a == b and a != generate_workload(300, seed=4, rate=5.0)
    assert all(r.prompt_len >= 1 and r.output_len >= 1 and r.total_len <= 4096 for r in a)
    assert [r.request_id for r in a] == list(range(300))
    kinds = summarize(a)
    assert set(kinds) == {"chat", "document", "all"}
    assert kinds["document"]["mean_prompt"] > 5 * kinds["chat"]["mean_prompt"]
    small = generate_workload(100, seed=0, mix=SMALL_MIX, max_len=128)
    assert max(r.total_len for r in small) <= 128


def test_arrivals_are_a_poisson_process():
    import numpy as np

    times = poisson_arrivals(4000, 20.0, np.random.default_rng(0))
    gaps = np.diff(times)
    assert times[0] == 0 and (gaps >= 0).all()
    assert abs(gaps.mean() - 1 / 20) < 0.005 and abs(gaps.std() - 1 / 20) < 0.005  # exponential: mean == std
    assert (poisson_arrivals(5, None, np.random.default_rng(0)) == 0).all()
    with pytest.raises(ValueError, match="rate must be positive"):
        poisson_arrivals(5, 0.0, np.random.default_rng(0))


def test_memory_waste_by_hand():
    # prompt 3, output 2: the cache holds 4 then 5 tokens.
    r = memory_waste([Request(0, 3, 2)], block_size=4, max_len=10)
    assert r.used == 9 and r.contiguous_reserved == 20 and r.paged_reserved == 4 + 8
    assert r.contiguous == pytest.approx(1 - 9 / 20) and r.paged == pytest.approx(1 - 9 / 12)
    with pytest.raises(ValueError, match="more than max_len=4"):
        memory_waste([Request(0, 3, 2)], max_len=4)


def test_paged_waste_is_small_on_the_default_workload_and_is_recorded():
    from labkit.bench.paged import WASTE_WORKLOAD, waste_records
    from labkit.bench.records import load_results

    requests = generate_workload(**WASTE_WORKLOAD)
    report = memory_waste(requests, block_size=16)
    assert report.paged <= 0.04 and report.contiguous >= 0.5
    # Recorded in data/results, and in step with the code: recompute and compare.
    (recorded,) = load_results("paged_waste_*.json")
    fresh = waste_records(requests, seed=WASTE_WORKLOAD["seed"])
    assert [(r.kernel, r.extra["waste"]) for r in recorded["records"]] == [(r.kernel, r.extra["waste"]) for r in fresh]


def test_bench_paged_checks_every_kernel_in_sim_mode():
    from labkit.bench.paged import bench_paged, ratio_table, to_paged

    records = bench_paged((4, 8), B=2, Hq=4, Hkv=2, T=13, D=16, dtype=torch.float32)
    assert [r.kernel for r in records] == ["contiguous", "sdpa", "paged bs=4", "paged bs=8"]
    assert all(r.time_ms is None and r.extra["rel_error"] <= 1e-5 for r in records)
    assert "bs=4" in ratio_table(records)
    for B in (1, 2):  # batch 1 once made a non-contiguous pool
        k = torch.randn(B, 2, 13, 16)
        pool, tables = to_paged(k, 4)
        assert pool.is_contiguous() and torch.equal(gather_paged(pool, tables, torch.tensor([13] * B)), k)


def test_notebook_kernel_solution_compiles_for_the_t4(tmp_path):
    """The master's solution to exercise 05.paged_kernel, as a module, compiled for sm_75."""
    import importlib.util

    import nbformat

    from labkit.testing.t4 import compile_triton_many_for_t4

    nb = nbformat.read(ROOT / "solutions" / "05_paged_kv_cache.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if c.metadata.get("labkit", {}).get("exercise") == "05.paged_kernel"]
    path = tmp_path / "nb05_kernel.py"
    path.write_text("import math\nimport labkit\nimport torch\nimport triton\nimport triton.language as tl\n\n"
                    + cell.source + "\n")
    spec = importlib.util.spec_from_file_location("nb05_kernel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sig = {"q_ptr": "*fp16", "k_ptr": "*fp16", "v_ptr": "*fp16", "bt_ptr": "*i32", "len_ptr": "*i32",
           "out_ptr": "*fp16", "qk_scale": "fp32", "stride_bt": "i32"}
    fp32 = {k: v.replace("fp16", "fp32") for k, v in sig.items()}
    builds = compile_triton_many_for_t4([
        (module.paged_attention_kernel, sig, {"HQ": 32, "HKV": 8, "BS": 16, "D": 128}, 4),
        (module.paged_attention_kernel, fp32, {"HQ": 12, "HKV": 12, "BS": 32, "D": 64}, 4),
    ])
    assert all(b.cubin_bytes > 0 for b in builds)


def test_paged_plots_render_records():
    import matplotlib

    matplotlib.use("Agg")
    from labkit.bench.paged import waste_records
    from labkit.bench.records import Record
    from labkit.viz.paged import plot_block_sizes, plot_waste, relative_speeds

    assert plot_waste(waste_records(generate_workload(20, seed=1))) is not None
    shape = {"B": 1, "Hq": 32, "Hkv": 32, "D": 128}
    records = [Record(kernel, {**shape, "T": T}, "float16", 1, time_ms=ms)
               for T in (1024, 4096) for kernel, ms in (("contiguous", 0.02), ("paged bs=16", 0.025), ("sdpa", 0.04))]
    speeds = {k: {t: round(x, 6) for t, x in row.items()} for k, row in relative_speeds(records).items()}
    assert speeds == {"paged bs=16": {1024: 0.8, 4096: 0.8}, "sdpa": {1024: 0.5, 4096: 0.5}}
    assert plot_block_sizes(records) is not None


def test_masked_attention_matches_per_query_decode_with_gqa():
    # S queries under a causal mask over ragged lengths = S single-query decodes, each over its prefix.
    torch.manual_seed(fresh_seed())
    B, Hq, Hkv, S, T, D = 3, 6, 2, 4, 13, 16
    q, k, v = torch.randn(B, Hq, S, D), torch.randn(B, Hkv, T, D), torch.randn(B, Hkv, T, D)
    lengths = torch.tensor([9, 5, 13 - S])  # keys before the pass; query i also sees keys up to lengths + i
    pos = torch.arange(T)
    mask = pos[None, None, :] <= (lengths[:, None] + torch.arange(S)[None, :])[:, :, None]  # [B, S, T]
    out = masked_attention(q, k, v, mask[:, None], scale=0.3)
    for b in range(B):
        for i in range(S):
            n = int(lengths[b]) + i + 1
            want = reference_decode(q[b:b + 1, :, i], k[b:b + 1, :, :n], v[b:b + 1, :, :n], scale=0.3)
            assert rel_error(out[b:b + 1, :, i], want) <= 1e-5

