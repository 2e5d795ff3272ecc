"""Triton decode attention (one pass and flash-decoding), its split heuristic, notebook 03's
checks and the attention section of `labkit bench` — in sim mode, against the float64 reference."""

from __future__ import annotations

import argparse
import math
import random

import labkit  # noqa: F401  (first: it switches Triton to its interpreter before triton is imported)
from labkit import runtime
import pytest
import torch
import triton
import triton.language as tl

from labkit.attention import decode_attention, reference_decode
from labkit.attention.splits import (chunk_bounds, flash_attn_num_splits, merge_reference, num_splits_heuristic,
                                     reference_partials, sm_utilisation)
from labkit.attention.triton_merge import _merge_kernel
from labkit.attention.triton_decode import (HEAD_DIMS, MAX_SPLITS, flash_decode,
                                            heads_per_program, kernel_config, plan_splits, short_context_block,
                                            triton_decode, workspace)
from labkit.attention.triton_plan import Config
from labkit.checks.core import CheckFailure, TOLERANCE, fresh_seed, rel_error
from labkit.rope import apply_rope, rope_tables
from labkit.testing.attend_builds import attend_build


def inputs(B, Hq, Hkv, T, D, dtype=torch.float32):
    return (torch.randn(B, Hq, D).to(dtype), torch.randn(B, Hkv, T, D).to(dtype), torch.randn(B, Hkv, T, D).to(dtype))


# --- correctness -------------------------------------------------------------------------------
CASES = [  # (B, Hq, Hkv, T, D, dtype, num_splits): odd T, T under a split, T = 1, GQA 1/4/8, D 64/128
    (2, 4, 4, 37, 64, torch.float32, 3),
    (1, 2, 2, 5, 128, torch.float16, 4),  # T shorter than one split (and one tile)
    (3, 8, 2, 1, 64, torch.float32, None),  # T = 1
    (2, 8, 2, 70, 16, torch.float16, 5),  # GQA 4
    (1, 8, 1, 33, 32, torch.float32, 2),  # GQA 8: two programs per KV head
    (2, 6, 2, 19, 16, torch.bfloat16, 3),  # GQA 3: a group that is not a power of two
    (1, 2, 2, 9, 256, torch.float32, 1),
]


@pytest.mark.parametrize("use_dot", [False, True], ids=["reduce", "dot"])
@pytest.mark.parametrize("B,Hq,Hkv,T,D,dtype,splits", CASES)
def test_both_kernels_match_the_float64_reference(B, Hq, Hkv, T, D, dtype, splits, use_dot):
    # Both scoring paths run in the interpreter: reductions (the T4's, and MHA everywhere) and
    # tl.dot (GQA on sm_80+), whichever this machine's GPU would pick.
    if use_dot and dtype == torch.bfloat16 and runtime.is_sim():
        pytest.skip("Triton's interpreter computes bf16 tl.dot wrongly; the GPU run checks this path")
    q, k, v = inputs(B, Hq, Hkv, T, D, dtype)
    expected = reference_decode(q, k, v)
    out = torch.full_like(q, float("nan"))
    assert triton_decode(q, k, v, out=out, use_dot=use_dot) is out
    assert rel_error(out, expected) <= TOLERANCE[dtype]
    out.fill_(float("nan"))
    got = flash_decode(q, k, v, num_splits=splits, block_t=16, out=out, use_dot=use_dot)
    assert got is out and got.dtype == dtype
    assert rel_error(got, expected) <= TOLERANCE[dtype]


def test_registry_names_reach_both_kernels():
    q, k, v = inputs(1, 4, 2, 23, 16)
    expected = reference_decode(q, k, v)
    for impl in ("triton", "triton_splitk"):
        assert rel_error(decode_attention(q, k, v, impl=impl), expected) <= 1e-5


def test_explicit_scale():
    q, k, v = inputs(1, 2, 2, 20, 16)
    assert rel_error(flash_decode(q, k, v, scale=0.3, num_splits=2, block_t=8),
                     reference_decode(q, k, v, scale=0.3)) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_lengths_ignore_everything_past_each_sequence(dtype):
    B, Hq, Hkv, T, D = 3, 4, 2, 41, 16
    q, k, v = inputs(B, Hq, Hkv, T, D, dtype)
    lengths = torch.tensor([1, 17, 41], dtype=torch.int32)
    for b, n in enumerate(lengths.tolist()):  # garbage past the valid length must not leak in
        k[b, :, n:] = float("nan")
        v[b, :, n:] = float("inf")
    expected = torch.stack([reference_decode(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n])[0]
                            for b, n in enumerate(lengths.tolist())])
    assert rel_error(triton_decode(q, k, v, lengths=lengths), expected) <= TOLERANCE[dtype]
    for splits in (1, 3, 6):
        assert rel_error(flash_decode(q, k, v, lengths=lengths, num_splits=splits, block_t=4), expected) <= TOLERANCE[dtype]


@pytest.mark.parametrize("Hq,Hkv,D", [(4, 4, 64), (8, 2, 128)])
def test_rope_in_kernel_equals_attention_on_the_rotated_query(Hq, Hkv, D):
    B, T = 3, 26
    q, k, v = inputs(B, Hq, Hkv, T, D)
    cos, sin = rope_tables(200, D)
    positions = torch.tensor([0, 77, 199], dtype=torch.int32)
    rotated = apply_rope(q, positions[:, None], cos, sin)  # the contract: same as rotating q first
    lengths = torch.tensor([26, 9, 1], dtype=torch.int32)
    expected = reference_decode(apply_rope(q.double(), positions[:, None], cos, sin), k, v, lengths=lengths)
    for got in (triton_decode(q, k, v, rope=(cos, sin, positions), lengths=lengths),
                flash_decode(q, k, v, rope=(cos, sin, positions), lengths=lengths, num_splits=3, block_t=4)):
        assert rel_error(got, expected) <= 1e-5
        assert rel_error(got, flash_decode(rotated, k, v, lengths=lengths)) <= 1e-5


def test_more_splits_than_tiles_and_workspace_reuse():
    q, k, v = inputs(2, 2, 2, 10, 16)
    expected = reference_decode(q, k, v)
    assert plan_splits(2, 2, 2, 10, Config(block_t=4, num_warps=4, num_stages=1), num_splits=50) == 3  # capped at the tiles
    assert rel_error(flash_decode(q, k, v, num_splits=50, block_t=4), expected) <= 1e-5
    ws = workspace(q.device, 2, 2, 3, 16)
    again = workspace(q.device, 2, 2, 3, 16)  # cached: no allocation on the hot path
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(ws, again))


def test_large_scores_do_not_overflow():
    q, k, v = inputs(1, 2, 2, 50, 16)
    q *= 60
    for got in (triton_decode(q, k, v), flash_decode(q, k, v, num_splits=4, block_t=8)):
        assert rel_error(got, reference_decode(q, k, v)) <= 1e-5


# --- bad input ---------------------------------------------------------------------------------
def test_bad_inputs_name_the_argument():
    q, k, v = inputs(2, 4, 2, 8, 16)
    cos, sin = rope_tables(16, 16)
    pos = torch.zeros(2, dtype=torch.int32)
    bad = [
        (TypeError, "q", lambda: flash_decode(q.to(torch.int32), k, v)),
        (TypeError, "dtype", lambda: flash_decode(q, k.half(), v)),
        (ValueError, "contiguous", lambda: flash_decode(q, k.transpose(2, 3), v.transpose(2, 3))),
        (ValueError, "head dim", lambda: flash_decode(*inputs(1, 2, 2, 4, 48))),
        (ValueError, "multiple", lambda: flash_decode(*inputs(1, 3, 2, 4, 16))),
        (TypeError, "lengths must be int32", lambda: flash_decode(q, k, v, lengths=torch.ones(2, dtype=torch.int64))),
        (ValueError, "lengths must have shape", lambda: flash_decode(q, k, v, lengths=torch.ones(3, dtype=torch.int32))),
        (ValueError, "lengths must lie", lambda: flash_decode(q, k, v, lengths=torch.tensor([0, 3], dtype=torch.int32))),
        (ValueError, "lengths must lie", lambda: flash_decode(q, k, v, lengths=torch.tensor([9, 3], dtype=torch.int32))),
        (TypeError, "rope must be", lambda: flash_decode(q, k, v, rope=(cos, sin))),
        (ValueError, "rope cos", lambda: flash_decode(q, k, v, rope=(cos[:, :4], sin[:, :4], pos))),
        (TypeError, "rope positions", lambda: flash_decode(q, k, v, rope=(cos, sin, pos.long()))),
        (ValueError, "rope positions must lie", lambda: flash_decode(q, k, v, rope=(cos, sin, pos + 16))),
        (ValueError, "out must have", lambda: flash_decode(q, k, v, out=torch.empty(2, 4, 8))),
        (TypeError, "out has dtype", lambda: flash_decode(q, k, v, out=torch.empty(2, 4, 16, dtype=torch.float16))),
        (ValueError, "num_splits", lambda: flash_decode(q, k, v, num_splits=0)),
    ]
    for exc, words, call in bad:
        with pytest.raises(exc, match=words):
            call()


# --- split heuristic ---------------------------------------------------------------------------
def test_flash_attn_heuristic_matches_the_published_figures():
    assert flash_attn_num_splits(32, 2 * 40, 4096 // 128) == 5  # T4
    assert flash_attn_num_splits(32, 2 * 132, 4096 // 128) == 7  # H100
    assert flash_attn_num_splits(8 * 32, 2 * 132, 32) == 1  # already fills the GPU


def test_sm_utilisation_of_twelve_heads_on_a_t4():
    assert sm_utilisation(12, 40) == pytest.approx(0.3)
    assert sm_utilisation(12 * 8, 40) == pytest.approx(0.8)
    assert sm_utilisation(120, 40) == 1.0


def test_num_splits_heuristic_properties():
    rng = random.Random(fresh_seed())
    for _ in range(300):
        B, H, T, sms, bt = rng.randint(1, 64), rng.choice([1, 2, 8, 12, 32]), rng.randint(1, 70000), \
            rng.choice([40, 108, 132]), rng.choice([16, 32, 64, 128])
        s = num_splits_heuristic(B, H, T, sms, block_t=bt)
        tiles = math.ceil(T / bt)
        assert 1 <= s <= min(max(1, tiles), MAX_SPLITS)
        per = math.ceil(tiles / s)
        assert math.ceil(tiles / per) == s  # equal whole-tile chunks, none empty
        if B * H >= 4 * sms:
            assert s == 1  # the GPU is already full
    assert num_splits_heuristic(1, 12, 8192, 40, block_t=128) * 12 >= 4 * 40 * 0.8  # fills a T4
    assert num_splits_heuristic(1, 32, 32768, 132, block_t=64) * 32 >= 4 * 132 * 0.8  # fills an H100


def test_num_splits_heuristic_avoids_a_partial_last_wave():
    # 8 × 32 programs on 132 SMs × 4: 3 splits would make 1.45 waves, 2 make one full wave
    assert num_splits_heuristic(8, 32, 4096, 132, block_t=128) == 2
    rng = random.Random(fresh_seed())
    for _ in range(200):
        B, H, T, sms = rng.randint(1, 16), rng.choice([1, 8, 12, 32]), rng.randint(1, 70000), rng.choice([40, 132])
        s = num_splits_heuristic(B, H, T, sms, block_t=64)
        tiles = math.ceil(T / 64)
        want = math.ceil(4 * sms / (B * H))
        for other in range(1, min(want, tiles, MAX_SPLITS) + 1):  # no count within one wave does better
            other = math.ceil(tiles / math.ceil(tiles / other))
            assert sm_utilisation(B * H * s, sms, 4) >= sm_utilisation(B * H * other, sms, 4)


def test_chunks_and_reference_partials_merge_back():
    q, k, v = inputs(2, 4, 2, 11, 16)
    assert chunk_bounds(11, 4) == [(0, 3), (3, 6), (6, 9), (9, 11)]
    assert chunk_bounds(2, 4)[2:] == [(2, 2), (2, 2)]
    for S in (1, 4, 15):
        m, l, acc = reference_partials(q, k, v, S)
        assert rel_error(merge_reference(m, l, acc), reference_decode(q, k, v)) < 1e-12


# --- compiles for the T4 -----------------------------------------------------------------------
def test_every_kernel_compiles_for_sm75_within_64kb_of_shared_memory():
    from labkit.testing import compile_triton_many_for_t4

    # (dtype, D, group, split): MHA and GQA as the bench runs them (split, with lengths and
    # rope), the one-pass path, D = 256, the paged variant; and the merge kernel at its largest tile.
    requests = [attend_build(dt, D, group, split, T) for dt, D, group, split, T in (
        ("fp16", 128, 1, True, 8192), ("fp16", 128, 4, True, 8192), ("fp16", 64, 1, False, 8192),
        ("fp32", 128, 1, True, 8192), ("fp32", 256, 2, True, 8192), ("fp16", 128, 1, True, 512))]
    requests += [attend_build("fp16", 128, g, True, 8192, paged=True) for g in (1, 4)]
    for dt in ("fp16", "fp32"):
        requests.append((_merge_kernel, {"Mws": "*fp32", "Lws": "*fp32", "Accws": "*fp32", "Out": f"*{dt}",
                                         "num_splits": "i32"}, dict(HEAD_DIM=128, SPLITS_P=MAX_SPLITS), 4))
    for build in compile_triton_many_for_t4(requests):
        assert 0 < build.shared_bytes <= 64 * 1024 or build.name == "_merge_kernel"
        assert build.cubin_bytes > 0


def test_default_tiles_do_not_spill_registers():
    from labkit.testing import compile_triton_many_for_t4

    # A spilled tile goes through local memory: the loads the kernel exists to stream then
    # compete with spill traffic (8 heads at 64 tokens spill 100 bytes on sm_75).
    cases = [((7, 5), "fp16", 128, g) for g in (1, 2, 4, 8)] + [((7, 5), "fp32", 128, 1), ((7, 5), "fp16", 256, 4),
                                                                  ((9, 0), "fp16", 128, 1), ((9, 0), "fp16", 128, 4),
                                                                  ((9, 0), "fp16", 128, 8)]
    builds = compile_triton_many_for_t4([attend_build(dt, D, g, True, 8192, cc=cc) for cc, dt, D, g in cases],
                                        ccs=[cc for cc, *_ in cases])
    for (cc, dt, D, g), build in zip(cases, builds):
        assert build.spill_bytes is not None, "ptxas -v gave no resource report"
        assert build.spill_bytes == 0, f"sm_{cc[0]}{cc[1]} {dt} D={D} group={g}: {build.spill_bytes} bytes spilled"


def test_the_tensor_core_gqa_path_compiles_for_sm80_and_sm90():
    from labkit.testing import compile_triton_many_for_t4

    # GQA on sm_80+ scores with tl.dot; the course's tests compile it there too (no GPU needed).
    requests = [attend_build(dt, 128, g, True, 8192, cc=cc, paged=paged)
                for cc in ((8, 0), (9, 0)) for dt, g, paged in (("fp16", 4, False), ("bf16", 8, True))]
    assert all(r[2]["USE_DOT"] for r in requests)
    for build in compile_triton_many_for_t4(requests, ccs=[(8, 0)] * 2 + [(9, 0)] * 2):
        assert build.cubin_bytes > 0 and build.shared_bytes <= 100 * 1024


def test_the_tensor_core_one_head_path_compiles_for_sm90():
    from labkit.testing import compile_triton_many_for_t4

    # One head per KV head with a 16-bit cache scores with tl.dot on sm_90, its tiles two stages
    # deep in shared memory (an H100/H200 block may take 227 KB); fp32 stays on reductions.
    cases = [("fp16", 128, True, False), ("bf16", 256, True, True), ("fp16", 64, False, False),
             ("fp32", 128, True, False)]
    requests = [attend_build(dt, D, 1, split, 8192, cc=(9, 0), paged=paged) for dt, D, split, paged in cases]
    assert [r[2]["USE_DOT"] for r in requests] == [True, True, True, False]
    assert requests[0][2]["NUM_STAGES"] == 2
    for build in compile_triton_many_for_t4(requests, ccs=[(9, 0)] * len(requests)):
        assert build.cubin_bytes > 0 and build.shared_bytes <= 227 * 1024


def test_configs_per_gpu():
    assert {64, 128} <= set(HEAD_DIMS)
    for D in HEAD_DIMS:
        for group in (1, 2, 4, 8, 32):
            t4, h100 = kernel_config(D, group, (7, 5)), kernel_config(D, group, (9, 0))
            assert t4.num_stages == 1 and not t4.use_dot  # no cp.async before sm_80; the T4 stays on reductions
            assert 16 <= t4.block_t <= 128 and 16 <= h100.block_t <= 128
            assert h100.use_dot  # 16-bit caches on the tensor cores on sm_90, one head as well as a group
            assert kernel_config(D, group, (8, 0)).use_dot == (group > 1)  # sm_80: GQA only
            assert kernel_config(D, group, (9, 0), itemsize=4).use_dot == (group > 1)  # fp32 stays on reductions
            assert h100.num_stages == (2 if group == 1 else 1)
            assert short_context_block(h100.block_t, 512) <= h100.block_t
            assert heads_per_program(group, t4.use_dot) <= 4
            assert heads_per_program(group, True) >= 16  # tl.dot needs 16 rows


# --- notebook 03's checks ----------------------------------------------------------------------
@triton.jit
def one_pass_kernel(Q, K, V, Out, scale, T, HQ: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                    BLOCK_T: tl.constexpr):
    pid = tl.program_id(0)
    kv = (pid // HQ) * (HQ // GROUP) + (pid % HQ) // GROUP
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + pid * HEAD_DIM + d, mask=d < HEAD_DIM).to(tl.float32) * scale
    m = float("-inf")
    l = 0.0
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for start in range(0, T, BLOCK_T):
        t = start + tl.arange(0, BLOCK_T)
        mask = t < T
        rows = (kv * T + t[:, None]) * HEAD_DIM + d[None, :]
        k = tl.load(K + rows, mask=mask[:, None], other=0.0).to(tl.float32)
        v = tl.load(V + rows, mask=mask[:, None], other=0.0).to(tl.float32)
        s = tl.where(mask, tl.sum(k * q[None, :], axis=1), float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new)
        l = l * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        m = m_new
    tl.store(Out + pid * HEAD_DIM + d, (acc / l).to(Out.dtype.element_ty), mask=d < HEAD_DIM)


@triton.jit
def unmasked_one_pass_kernel(Q, K, V, Out, scale, T, HQ: tl.constexpr, GROUP: tl.constexpr,
                             HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr):
    pid = tl.program_id(0)
    kv = (pid // HQ) * (HQ // GROUP) + (pid % HQ) // GROUP
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + pid * HEAD_DIM + d, mask=d < HEAD_DIM).to(tl.float32) * scale
    m = float("-inf")
    l = 0.0
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for start in range(0, T, BLOCK_T):
        t = start + tl.arange(0, BLOCK_T)
        mask = t < T
        rows = (kv * T + t[:, None]) * HEAD_DIM + d[None, :]
        k = tl.load(K + rows, mask=mask[:, None], other=0.0).to(tl.float32)
        v = tl.load(V + rows, mask=mask[:, None], other=0.0).to(tl.float32)
        s = tl.sum(k * q[None, :], axis=1)  # bug: padded tokens keep score 0 and get weight
        m_new = tl.maximum(m, tl.max(s, axis=0))
        p = tl.exp(s - m_new)
        alpha = tl.exp(m - m_new)
        l = l * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        m = m_new
    tl.store(Out + pid * HEAD_DIM + d, (acc / l).to(Out.dtype.element_ty), mask=d < HEAD_DIM)


@triton.jit
def split_kernel(Q, K, V, M, L, Acc, scale, T, chunk, num_splits, HQ: tl.constexpr, GROUP: tl.constexpr,
                 HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    kv = (pid // HQ) * (HQ // GROUP) + (pid % HQ) // GROUP
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + pid * HEAD_DIM + d, mask=d < HEAD_DIM).to(tl.float32) * scale
    t_begin = split * chunk
    t_end = tl.minimum(t_begin + chunk, T)
    m = float("-inf")
    l = 0.0
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for start in range(t_begin, t_end, BLOCK_T):
        t = start + tl.arange(0, BLOCK_T)
        mask = t < t_end
        rows = (kv * T + t[:, None]) * HEAD_DIM + d[None, :]
        k = tl.load(K + rows, mask=mask[:, None], other=0.0).to(tl.float32)
        v = tl.load(V + rows, mask=mask[:, None], other=0.0).to(tl.float32)
        s = tl.where(mask, tl.sum(k * q[None, :], axis=1), float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new)
        l = l * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        m = m_new
    part = pid * num_splits + split
    tl.store(M + part, m)
    tl.store(L + part, l)
    tl.store(Acc + part * HEAD_DIM + d, acc, mask=d < HEAD_DIM)


@triton.jit
def merge_kernel(M, L, Acc, Out, num_splits, HEAD_DIM: tl.constexpr, SPLITS_P: tl.constexpr):
    row = tl.program_id(0)
    s = tl.arange(0, SPLITS_P)
    d = tl.arange(0, HEAD_DIM)
    mask = s < num_splits
    m = tl.load(M + row * num_splits + s, mask=mask, other=float("-inf"))
    l = tl.load(L + row * num_splits + s, mask=mask, other=0.0)
    acc = tl.load(Acc + (row * num_splits + s[:, None]) * HEAD_DIM + d[None, :], mask=mask[:, None], other=0.0)
    w = tl.exp(m - tl.max(m, axis=0))
    out = tl.sum(w[:, None] * acc, axis=0) / tl.sum(w * l, axis=0)
    tl.store(Out + row * HEAD_DIM + d, out.to(Out.dtype.element_ty), mask=d < HEAD_DIM)


@triton.jit
def unstable_merge_kernel(M, L, Acc, Out, num_splits, HEAD_DIM: tl.constexpr, SPLITS_P: tl.constexpr):
    row = tl.program_id(0)
    s = tl.arange(0, SPLITS_P)
    d = tl.arange(0, HEAD_DIM)
    mask = s < num_splits
    m = tl.load(M + row * num_splits + s, mask=mask, other=float("-inf"))
    l = tl.load(L + row * num_splits + s, mask=mask, other=0.0)
    acc = tl.load(Acc + (row * num_splits + s[:, None]) * HEAD_DIM + d[None, :], mask=mask[:, None], other=0.0)
    w = tl.exp(m)  # bug: no global max subtracted, so large scores overflow
    out = tl.sum(w[:, None] * acc, axis=0) / tl.sum(w * l, axis=0)
    tl.store(Out + row * HEAD_DIM + d, out.to(Out.dtype.element_ty), mask=d < HEAD_DIM)


@triton.jit
def stub_kernel(Q, K, V, Out, scale, T, HQ: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                BLOCK_T: tl.constexpr):
    raise NotImplementedError("Exercise 03.one_pass: your code here")


def test_checks_pass_correct_kernels(capsys):
    from labkit.checks import nb03

    nb03.check_one_pass(one_pass_kernel)
    nb03.check_split(split_kernel)
    nb03.check_merge(merge_kernel)
    out = capsys.readouterr().out
    assert "03.one_pass: all" in out and "03.split: all" in out and "03.merge: all" in out


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the unstable merge overflows on purpose
def test_checks_fail_stubs_and_bugs():
    from labkit.checks import nb03

    with pytest.raises(CheckFailure, match="not started"):
        nb03.check_one_pass(stub_kernel)
    with pytest.raises(CheckFailure, match="T not a multiple of the block"):
        nb03.check_one_pass(unmasked_one_pass_kernel)
    with pytest.raises(CheckFailure, match="no overflow"):
        nb03.check_merge(unstable_merge_kernel)
    with pytest.raises(CheckFailure, match="m of empty chunks|empty chunks"):
        nb03.check_split(one_pass_kernel)  # the wrong kernel entirely


# --- labkit bench ------------------------------------------------------------------------------
def test_bench_attention_checks_every_kernel_in_sim_mode(capsys):
    from labkit.bench.attention import attention_section, bench_attention, seed_table
    from labkit.bench.records import Record

    records, failures = bench_attention(["llama-gqa"], batches=[1], contexts=[16], progress=False,
                                        kernels=("naive", "triton", "triton_splitk", "sdpa"))
    assert not failures
    assert {r.kernel for r in records} == {"naive", "triton", "triton_splitk", "sdpa"}
    assert all(r.time_ms is None and r.extra["rel_error"] <= 2e-3 for r in records)
    timed = [Record(k, {"B": 1, "Hq": 12, "Hkv": 12, "T": T, "D": 64}, "float32", 1, ms, extra={"shape": "gpt2"})
             for T in (512, 4096) for k, ms in (("naive", 2.0), ("numba", 1.0), ("triton_splitk", 0.5), ("sdpa", 0.8))]
    table = seed_table(timed)
    assert "4.0×" in table and "5.1×" in table and "1.7×" in table
    args = argparse.Namespace(shapes="gpt2", dtype=None, contexts="16", batches="1")
    assert attention_section(None, None, args) == 0
    out = capsys.readouterr().out
    assert "timings need a GPU" in out and "triton_splitk" in out
