"""The quantized KV cache (notebook 08): formats, quantize-on-write, the dequantizing
flash-decoding kernel (contiguous and paged), notebook 08's checks, and the T4 compile tests —
in sim mode, against float64 references.

Two references: the float64 attention over the *dequantized* cache, which the kernels must
match to fp32/fp16 rounding (tight), and the float64 attention over the unquantized cache,
which they match within the quantization bound stated below.
"""

from __future__ import annotations

import math

import labkit  # noqa: F401  (first: it switches Triton to its interpreter)
import pytest
import torch
import triton
import triton.language as tl

from labkit.attention import decode_attention, reference_decode
from labkit.attention.quant_decode import quant_flash_decode, reference_quant_decode
from labkit.attention.triton_quant import quant_config_for
from labkit.checks.core import CheckFailure, rel_error
from labkit.kvcache.paged_attention import gather_paged, paged_decode
from labkit.kvcache.quant import (FORMATS, QuantKV, bytes_per_token, empty_quant, quant_decode_bytes, quantize,
                                  quantize_per_channel, to_paged_quant)
from labkit.kvcache.quant_write import quant_write, quant_write_kernel, reference_quant_write
from labkit.rope import rope_tables
from labkit.testing.attend_builds import quant_build

# int8, one absmax scale per row of D standard-normal values: the step is max|x|/127 (about 0.02
# at D = 128), the error uniform within half a step; the attention output's relative error
# against the unquantized cache measures about 0.008 (data/results/quant-accuracy_cpu.json).
INT8_BOUND = 0.02
TIGHT = {torch.float32: 1e-5, torch.float16: 2e-3}


def qkv(B, Hq, Hkv, T, D, dtype=torch.float32, gen=None):
    q = torch.randn(B, Hq, D, generator=gen).to(dtype)
    k = torch.randn(B, Hkv, T, D, generator=gen)
    v = torch.randn(B, Hkv, T, D, generator=gen)
    return q, k, v


# --- formats -----------------------------------------------------------------------------------
def test_int8_quantization_is_symmetric_absmax_within_half_a_step():
    x = torch.randn(3, 4, 37, 64) * torch.logspace(-3, 3, 37)[None, None, :, None]
    x[0, 0, 5] = 0
    q = quantize(x, "int8")
    assert q.data.dtype == torch.int8 and q.scale.dtype == torch.float32 and q.scale.shape == x.shape[:-1]
    assert int(q.data.min()) >= -127 and bool((q.data.abs().amax(-1)[q.scale > 0] == 127).all())
    err = (q.dequantize(torch.float64) - x.double()).abs()
    # half a step, plus fp32's rounding of x / scale (|x / scale| <= 127, a few ulps of 2^-24)
    step = q.scale.double()[..., None]
    assert bool((err <= step * (0.5 + 127 * 2.0**-22) + 1e-30).all())
    assert float(q.dequantize()[0, 0, 5].abs().max()) == 0 and torch.isfinite(q.dequantize()).all()


def test_fp8_quantization_error_is_fp8s():
    x = torch.randn(2, 3, 50, 128)
    q = quantize(x, "fp8_e4m3")
    assert q.data.dtype == torch.float8_e4m3fn
    rel = (q.dequantize() - x).abs() / x.abs().amax(-1, keepdim=True)
    assert float(rel.max()) <= 2 ** -4 * 1.01  # 3 mantissa bits: half a step is 1/16 of the value at most


def test_per_channel_keys_and_bytes():
    x = torch.randn(2, 2, 30, 16)
    x[..., 3] *= 50  # an outlier channel
    per_channel = quantize_per_channel(x)
    per_token = quantize(x).dequantize()
    small = [c for c in range(16) if c != 3]
    assert rel_error(per_channel[..., small], x[..., small]) < rel_error(per_token[..., small], x[..., small])
    assert bytes_per_token(8, 128, "int8") == 2 * 8 * 132 and bytes_per_token(8, 128) == 2 * 8 * 256
    assert quant_decode_bytes(1, 32, 32, 100, 128) == 100 * 2 * 32 * 132 + 2 * 32 * 128 * 2


def test_quantkv_rejects_mismatched_parts():
    with pytest.raises(TypeError, match="int8"):
        QuantKV(torch.zeros(2, 4, dtype=torch.int16), torch.zeros(2))
    with pytest.raises(ValueError, match="scale"):
        QuantKV(torch.zeros(2, 4, dtype=torch.int8), torch.zeros(4))
    with pytest.raises(ValueError, match="format"):
        quantize(torch.randn(2, 4), "int4")


# --- quantize-on-write -------------------------------------------------------------------------
@pytest.mark.parametrize("D,H,rope,dtype", [(64, 3, True, torch.float16), (32, 2, False, torch.float32),
                                            (128, 4, True, torch.float32)])
def test_quant_write_equals_reference(D, H, rope, dtype):
    R, S, N = 3, 10, 5
    kn, vn = (torch.randn(N, H, D).to(dtype) for _ in range(2))
    got_k, got_v, want_k, want_v = (empty_quant((R, H, S, D)) for _ in range(4))
    for t in (got_k, got_v, want_k, want_v):
        t.data.fill_(99), t.scale.fill_(-1.0)
    rows = torch.tensor([0, 1, 2, 0, 1], dtype=torch.int32)
    slots = torch.tensor([0, 3, S - 1, 5, 7], dtype=torch.int32)
    r = None
    if rope:
        cos, sin = rope_tables(64, D)
        r = (cos, sin, torch.tensor([1, 5, 63, 0, 17], dtype=torch.int32))
    quant_write(kn, vn, got_k, got_v, rows, slots, r)
    reference_quant_write(kn, vn, want_k, want_v, rows, slots, r)
    for got, want in ((got_k, want_k), (got_v, want_v)):
        assert int((got.data.int() - want.data.int()).abs().max()) <= 1  # a rounding tie at most
        assert float((got.data != want.data).float().mean()) < 1e-3
        assert torch.allclose(got.scale, want.scale, rtol=1e-6, atol=0)  # untouched slots stay -1 in both


def test_the_sanitizer_target_writes_each_place_once():
    """Its quantize-on-write case once drew two tokens into one place (6% of runs), and the
    kernel's answer there is either token's: the value check failed under memcheck once."""
    from labkit.testing.sanitize_quant import write_places

    for _ in range(200):
        rows, slots = write_places(3, 33, 7, "cpu")
        assert rows.dtype == slots.dtype == torch.int32
        assert len(set(zip(rows.tolist(), slots.tolist()))) == 7
        assert (rows[-1], slots[-1]) == (2, 32) and rows.max() < 3 and slots.max() < 33


def test_quant_write_paged_pool_then_decode():
    B, H, D, BS, T = 2, 2, 64, 8, 21
    k, v = torch.randn(B, H, T, D), torch.randn(B, H, T, D)
    tables = torch.randperm(2 * math.ceil(T / BS)).view(B, -1).int()
    kp, vp = empty_quant((tables.numel(), H, BS, D)), empty_quant((tables.numel(), H, BS, D))
    for p in (kp, vp):
        p.data.zero_(), p.scale.zero_()
    pos = torch.arange(T).repeat(B).int()
    seq = torch.arange(B).repeat_interleave(T)
    rows = tables[seq.long(), (pos // BS).long()]
    quant_write(k.transpose(1, 2).reshape(-1, H, D), v.transpose(1, 2).reshape(-1, H, D), kp, vp, rows,
                (pos % BS).int())
    lengths = torch.full((B,), T, dtype=torch.int32)
    q = torch.randn(B, 4, D)
    out = paged_decode(q, kp, vp, tables, lengths)

    def contiguous(pool):  # the pool read back as a [B, H, T, D] QuantKV
        scale = gather_paged(pool.scale[..., None], tables, lengths)[..., 0]  # [B, H, T]
        return QuantKV(gather_paged(pool.data, tables, lengths), scale)

    kc, vc = contiguous(kp), contiguous(vp)
    assert rel_error(out, reference_quant_decode(q, kc, vc)) < 1e-5  # the decode reads what was written
    for got, x in ((kc, k), (vc, v)):  # ... which is quantize()'s, but for a value on a rounding tie
        want = quantize(x)
        steps = (got.data.int() - want.data.int()).abs()
        assert torch.allclose(got.scale, want.scale, rtol=1e-6, atol=0) and steps.max() <= 1 and steps.sum() <= 3


def test_quant_write_skips_out_of_range_tokens():
    kc, vc = empty_quant((2, 1, 4, 16)), empty_quant((2, 1, 4, 16))
    for t in (kc, vc):
        t.data.fill_(7), t.scale.fill_(3.0)
    kn = torch.randn(2, 1, 16)
    quant_write(kn, kn.clone(), kc, vc, torch.tensor([0, 5], dtype=torch.int32), torch.tensor([1, 1], dtype=torch.int32),
                check_indices=False)
    assert float(kc.scale[0, 0, 1]) != 3.0 and bool((kc.data[1] == 7).all()) and bool((kc.scale[1] == 3.0).all())
    with pytest.raises(ValueError, match="rows"):
        quant_write(kn, kn, kc, vc, torch.tensor([0, 5], dtype=torch.int32), torch.tensor([1, 1], dtype=torch.int32))


# --- the dequantizing kernel -------------------------------------------------------------------
CASES = [  # (B, Hq, Hkv, T, D, dtype, num_splits, use_dot)
    (2, 4, 4, 37, 64, torch.float32, 3, None),  # T not a multiple of the tile
    (1, 2, 2, 5, 128, torch.float16, 4, None),  # T shorter than one tile and than the splits
    (3, 8, 2, 1, 64, torch.float32, None, None),  # T = 1, GQA 4
    (2, 8, 2, 70, 16, torch.float16, 5, None),
    (1, 8, 1, 33, 32, torch.float32, 2, None),  # GQA 8: two programs per KV head
    (2, 6, 2, 19, 16, torch.float16, 3, None),  # GQA 3
    (2, 4, 2, 45, 64, torch.float16, 3, True),  # the tensor-core path (sm_80+), in the interpreter
    (2, 2, 2, 512, 128, torch.float16, 3, True),  # ... one head per KV head: whole tiles, then a partial one
]


@pytest.mark.parametrize("B,Hq,Hkv,T,D,dtype,splits,use_dot", CASES)
def test_kernel_matches_dequantized_reference_and_the_bound(B, Hq, Hkv, T, D, dtype, splits, use_dot):
    q, kf, vf = qkv(B, Hq, Hkv, T, D, dtype)
    k, v = quantize(kf), quantize(vf)
    lengths = torch.randint(1, T + 1, (B,), dtype=torch.int32)
    lengths[0] = T
    out = torch.full_like(q, float("nan"))
    quant_flash_decode(q, k, v, lengths=lengths, num_splits=splits, use_dot=use_dot, out=out)
    assert torch.isfinite(out).all(), "an output element was left unwritten"
    tight = TIGHT[dtype] if not use_dot else 1e-3  # the tensor-core path rounds p·scale to fp16
    assert rel_error(out, reference_quant_decode(q, k, v, lengths=lengths)) < tight
    assert rel_error(out, reference_decode(q, kf, vf, lengths=lengths)) < INT8_BOUND


HEADS_ON_N_CASES = [  # (B, Hq, Hkv, T, D, fmt, num_splits, block_t)
    (2, 2, 2, 200, 128, "int8", 3, 32),  # MHA: whole tiles, then a partial one
    (3, 1, 1, 1, 64, "int8", None, 16),  # T = 1
    (1, 6, 2, 45, 32, "int8", 2, 16),  # GQA 3: one padded head
    (1, 8, 1, 77, 64, "int8", 16, 16),  # GQA 8, splits past the length
    (2, 4, 2, 45, 64, "fp8_e4m3", 3, 16),
]


@pytest.mark.parametrize("B,Hq,Hkv,T,D,fmt,splits,block_t", HEADS_ON_N_CASES)
def test_the_heads_on_n_loop_matches_the_dequantized_reference(B, Hq, Hkv, T, D, fmt, splits, block_t):
    q, kf, vf = qkv(B, Hq, Hkv, T, D, torch.float16)
    k, v = quantize(kf, fmt), quantize(vf, fmt)
    lengths = torch.randint(1, T + 1, (B,), dtype=torch.int32)
    lengths[0] = T
    out = torch.full_like(q, float("nan"))
    quant_flash_decode(q, k, v, lengths=lengths, num_splits=splits, block_t=block_t, use_dot=True, heads_on_n=True,
                       out=out)
    assert torch.isfinite(out).all(), "an output element was left unwritten"
    assert rel_error(out, reference_quant_decode(q, k, v, lengths=lengths)) < 1e-3


def test_tensor_core_path_leaves_splits_past_the_length_empty():
    # 16 splits of 16-token tiles over T = 256: sequences of 1, 20 and 37 tokens leave most splits
    # with no token (their range starts past the length); such a split must add nothing.
    q, kf, vf = qkv(3, 2, 2, 256, 64, torch.float16)
    k, v = quantize(kf), quantize(vf)
    lengths = torch.tensor([1, 20, 37], dtype=torch.int32)
    out = torch.full_like(q, float("nan"))
    quant_flash_decode(q, k, v, lengths=lengths, num_splits=16, use_dot=True, out=out)
    assert rel_error(out, reference_quant_decode(q, k, v, lengths=lengths)) < 1e-3


def test_decode_attention_and_paged_decode_accept_the_quantized_cache():
    q, kf, vf = qkv(2, 4, 2, 40, 64)
    k, v = quantize(kf), quantize(vf)
    expected = reference_quant_decode(q, k, v)
    assert rel_error(decode_attention(q, k, v, impl="triton_int8"), expected) < 1e-5
    assert rel_error(decode_attention(q, kf, vf, impl="triton_int8"), expected) < 1e-5  # quantized on the way in
    kp, tables = to_paged_quant(k, 16)
    vp, _ = to_paged_quant(v, 16, tables=tables)
    lengths = torch.tensor([40, 17], dtype=torch.int32)
    out = paged_decode(q, kp, vp, tables, lengths, num_splits=3)
    assert rel_error(out, reference_quant_decode(q, k, v, lengths=lengths)) < 1e-5
    assert rel_error(out, quant_flash_decode(q, k, v, lengths=lengths, num_splits=3)) < 1e-6


def test_kernel_rejects_bad_inputs():
    q, kf, vf = qkv(1, 2, 2, 8, 64)
    k, v = quantize(kf), quantize(vf)
    with pytest.raises(TypeError, match="QuantKV"):
        paged_decode(q, k, kf, torch.zeros(1, 1, dtype=torch.int32), torch.ones(1, dtype=torch.int32))
    with pytest.raises(TypeError, match="format"):
        quant_flash_decode(q, k, v, fmt="fp8_e4m3")
    with pytest.raises(ValueError, match="lengths"):
        quant_flash_decode(q, k, v, lengths=torch.tensor([9], dtype=torch.int32))


# --- notebook 08's checks ------------------------------------------------------------------------
def _solution_quantize(x):
    x = x.float()
    amax = x.abs().amax(dim=-1)
    y = x * (127 / torch.where(amax > 0, amax, torch.ones_like(amax)))[..., None]
    return torch.round(y).clamp(-127, 127).to(torch.int8), amax / 127


@triton.jit
def _int8_tile(K, V, KS, VS, kv, start, T, HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr):
    # One tile of KV head kv: its int8 K and V rows as fp32, their scales, and which rows exist.
    d = tl.arange(0, HEAD_DIM)
    t = start + tl.arange(0, BLOCK_T)
    mask = t < T
    rows = (kv * T + t[:, None]) * HEAD_DIM + d[None, :]
    k = tl.load(K + rows, mask=mask[:, None], other=0).to(tl.float32)
    v = tl.load(V + rows, mask=mask[:, None], other=0).to(tl.float32)
    ks = tl.load(KS + kv * T + t, mask=mask, other=0.0)
    vs = tl.load(VS + kv * T + t, mask=mask, other=0.0)
    return k, v, ks, vs, mask


@triton.jit
def _solution_dequant_kernel(Q, K, V, KS, VS, Out, scale, T, HQ: tl.constexpr, GROUP: tl.constexpr,
                             HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr):
    pid = tl.program_id(0)
    kv = (pid // HQ) * (HQ // GROUP) + (pid % HQ) // GROUP
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + pid * HEAD_DIM + d).to(tl.float32) * scale
    m = float("-inf")
    l = 0.0
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for start in range(0, T, BLOCK_T):
        k, v, ks, vs, mask = _int8_tile(K, V, KS, VS, kv, start, T, HEAD_DIM, BLOCK_T)
        s = tl.where(mask, tl.sum(k * q[None, :], axis=1) * ks, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new)
        l = l * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum((p * vs)[:, None] * v, axis=0)
        m = m_new
    tl.store(Out + pid * HEAD_DIM + d, (acc / l).to(Out.dtype.element_ty))


@triton.jit
def _no_max_dequant_kernel(Q, K, V, KS, VS, Out, scale, T, HQ: tl.constexpr, GROUP: tl.constexpr,
                           HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr):
    # The solution without the running max: exp(s) of a score near 10^3 overflows fp32.
    pid = tl.program_id(0)
    kv = (pid // HQ) * (HQ // GROUP) + (pid % HQ) // GROUP
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + pid * HEAD_DIM + d).to(tl.float32) * scale
    l = 0.0
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for start in range(0, T, BLOCK_T):
        k, v, ks, vs, mask = _int8_tile(K, V, KS, VS, kv, start, T, HEAD_DIM, BLOCK_T)
        p = tl.where(mask, tl.exp(tl.sum(k * q[None, :], axis=1) * ks), 0.0)
        l += tl.sum(p, axis=0)
        acc += tl.sum((p * vs)[:, None] * v, axis=0)
    tl.store(Out + pid * HEAD_DIM + d, (acc / l).to(Out.dtype.element_ty))


@triton.jit
def _stub_kernel(Q, K, V, KS, VS, Out, scale, T, HQ: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                 BLOCK_T: tl.constexpr):
    raise NotImplementedError("08.dequant_kernel")


def test_nb08_checks_pass_solutions_and_fail_stubs(capsys):
    from labkit.checks import nb08

    nb08.check_quantize(_solution_quantize)
    nb08.check_dequant_kernel(_solution_dequant_kernel)
    out = capsys.readouterr().out
    assert "08.quantize: all 6 properties pass" in out and "08.dequant_kernel: all 10 properties pass" in out

    def stub(x):
        raise NotImplementedError("08.quantize")

    with pytest.raises(CheckFailure, match="not started"):
        nb08.check_quantize(stub)
    with pytest.raises(CheckFailure, match="not started"):
        nb08.check_dequant_kernel(_stub_kernel)
    # A wrong answer: the scale from the mean. Its scale is always wrong; whether its clamped maximum
    # still reaches ±127 depends on the random row length, so only the scale's message is certain.
    with pytest.raises(CheckFailure, match=r"scale = max\|row\| / 127"):
        nb08.check_quantize(lambda x: (torch.round(x.float() / (x.float().abs().mean(-1, keepdim=True) / 50)).clamp(
            -127, 127).to(torch.int8), x.float().abs().mean(-1) / 50))
    assert set(nb08.SOLUTIONS) == {"08.quantize", "08.dequant_kernel"}


def test_nb08_quantize_check_lets_only_near_ties_round_either_way():
    from labkit.checks.nb08 import TIE, _steps_off

    scale = torch.tensor([0.01], dtype=torch.float32)
    s = float(scale)  # x / scale in float64 lands where written below
    x = torch.tensor([[127 * s, (3.5 + 1e-6) * s, (3.5 + 0.01) * s, -2.2 * s]], dtype=torch.float64)
    data = torch.tensor([[127, 3, 4, -2]], dtype=torch.int8)
    assert bool((_steps_off(data, x, scale) <= 0.5 + TIE).all())
    data[0, 1] = 4  # a near-tie rounded up: as right as down
    assert bool((_steps_off(data, x, scale) <= 0.5 + TIE).all())
    for i, wrong in ((2, 3), (3, -3)):  # not a near-tie: one step off is wrong
        d = data.clone()
        d[0, i] = wrong
        assert float(_steps_off(d, x, scale)[0, i]) > 0.5 + TIE


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy, on the overflow on purpose
def test_nb08_large_key_scale_property_still_catches_an_overflow():
    # That property's tolerance is looser than the others' (fp32 rounding of scores near 10^3), so
    # this shows a kernel without the running max fails there, and only there.
    from labkit.checks import nb08

    with pytest.raises(CheckFailure) as info:
        nb08.check_dequant_kernel(_no_max_dequant_kernel)
    assert "1 of 10 properties failed" in str(info.value) and "[large key scales: no overflow]" in str(info.value)


# --- the accuracy study's machinery --------------------------------------------------------------
def test_quantized_cache_patch_is_restored_and_attention_errors_are_ordered():
    import labkit.model.transformer as tr
    from labkit.kvcache.quant_accuracy import attention_errors, quantized_cache

    original = tr.causal_attention
    with quantized_cache("int8"):
        assert tr.causal_attention is not original
    assert tr.causal_attention is original
    acts = [tuple(torch.randn(1, 2, 20, 16) for _ in range(3))]
    errs = attention_errors(acts, random_T=64, random_D=16)
    assert errs["random"]["int8"] < errs["random"]["fp8_e4m3"] < 0.1 and errs["model_mean"]["int8"] < INT8_BOUND


# --- compiles for the T4 (and the sm_89+/sm_90 paths) -------------------------------------------
def _write_build(fmt: str, torch_dtype: torch.dtype):
    from labkit.kvcache.quant import get_format

    f = get_format(fmt)
    sig = {"k_new_ptr": "*fp16", "v_new_ptr": "*fp16", "k_ptr": f"*{f.triton}", "v_ptr": f"*{f.triton}",
           "ks_ptr": "*fp32", "vs_ptr": "*fp32", "rows_ptr": "*i32", "slots_ptr": "*i32", "pos_ptr": "*i32",
           "cos_ptr": "*fp32", "sin_ptr": "*fp32", **{n: "i32" for n in (
               "H", "D", "HALF", "num_rows", "num_slots", "max_pos", "s_kn", "s_kh", "s_vn", "s_vh", "s_r", "s_h",
               "s_s", "ss_r", "ss_h", "ss_s", "s_tab")}}
    meta = dict(ROPE=True, QMAX=f.qmax, IS_INT=torch_dtype == torch.int8, BLOCK_H=8, BLOCK_HALF=64)
    return (quant_write_kernel, sig, meta, 4)


def test_quant_kernels_compile_for_sm75_within_64kb_without_spills():
    from labkit.testing import compile_triton_many_for_t4

    requests = [quant_build("i8", D, g, split, T, paged=paged) for D, g, split, T, paged in (
        (128, 1, True, 8192, False), (128, 4, True, 8192, False), (64, 1, False, 8192, False),
        (128, 1, True, 512, False), (128, 1, True, 8192, True), (128, 4, True, 8192, True), (256, 2, True, 8192, False))]
    requests.append(_write_build("int8", torch.int8))
    builds = compile_triton_many_for_t4(requests)
    for build in builds:
        assert 0 < build.shared_bytes <= 64 * 1024 and build.cubin_bytes > 0
        assert build.spill_bytes in (None, 0), f"{build.name}: {build.spill_bytes} bytes spilled on sm_75"
    assert not any(r[2]["USE_DOT"] for r in requests[:-1])  # the T4 path: loads and reductions only


def test_the_tensor_core_and_fp8_paths_compile_for_sm90():
    from labkit.testing import compile_triton_many_for_t4

    requests = [quant_build(fmt, 128, g, True, 8192, cc=(9, 0), paged=paged)
                for fmt, g, paged in (("i8", 1, False), ("fp8e4nv", 1, False), ("i8", 4, True), ("fp8e4nv", 8, True))]
    assert all(r[2]["USE_DOT"] for r in requests) and requests[0][2]["NUM_STAGES"] == 3
    requests.append(_write_build("fp8_e4m3", torch.float8_e4m3fn))
    builds = compile_triton_many_for_t4(requests, ccs=[(9, 0)] * len(requests))
    for build in builds:
        assert build.cubin_bytes > 0 and build.shared_bytes <= 227 * 1024 and build.spill_bytes in (None, 0)
    # V converts to fp16 before its layout change: read from shared memory whole, not a byte at a
    # time (the first version gathered 64 bytes per thread per tile, half the loop's instructions)
    assert [b.byte_shared_loads for b in builds[:4]] == [0, 0, 0, 0]
    # MHA on a contiguous cache runs one-warp programs of the heads-on-N loop, and the split plan
    # counts on four an SM: registers and shared memory must allow them (64K registers, 228 KB,
    # 1 KB reserved each)
    cfg = quant_config_for(128, 1, 8192, cc=(9, 0))
    assert requests[0][3] == 1 and requests[0][2]["HEADS_ON_N"] and cfg.programs_per_sm == 4
    n = cfg.programs_per_sm
    assert n * 32 * builds[0].registers <= 65536 and n * (builds[0].shared_bytes + 1024) <= 228 * 1024


def test_the_heads_on_n_loop_compiles_for_sm90_with_fewer_registers_and_no_byte_gathers():
    from labkit.testing import compile_triton_many_for_t4

    one_warp = dict(block_t=32, num_warps=1, num_stages=3)
    requests = [quant_build(fmt, 128, g, True, 8192, cc=(9, 0), hkv=32 // g, heads_on_n=True, **one_warp)
                for fmt, g in (("i8", 1), ("fp8e4nv", 1), ("i8", 8), ("fp8e4nv", 4))]
    # the other loop
    requests.append(quant_build("i8", 128, 1, True, 8192, cc=(9, 0), hkv=32, heads_on_n=False, **one_warp))
    assert [r[2]["HEADS"] for r in requests] == [1, 1, 8, 4, 16] and all(r[2]["HEADS_ON_N"] for r in requests[:4])
    builds = compile_triton_many_for_t4(requests, ccs=[(9, 0)] * len(requests))
    assert [b.byte_shared_loads for b in builds] == [0] * 5 and all(b.spill_bytes in (None, 0) for b in builds)
    # one-warp programs of this loop: fewer registers than the other loop's, and 8 fit an SM
    assert builds[0].registers < builds[4].registers
    assert 8 * 32 * builds[0].registers <= 65536 and 8 * (builds[0].shared_bytes + 1024) <= 228 * 1024


def test_the_sm90_mha_plan_aims_at_four_one_warp_programs_an_sm_with_four_tiles_at_least(monkeypatch):
    from labkit.attention import triton_plan

    monkeypatch.setattr(triton_plan, "sm_count", lambda device_index=None: 132)  # an H100's or H200's
    splits = {}
    for B, T in ((1, 512), (1, 2048), (1, 8192), (1, 32768), (8, 8192)):
        cfg = quant_config_for(128, 1, T, cc=(9, 0))
        splits[B, T] = triton_plan.plan_splits(B, 32, 32, T, cfg)
        assert (cfg.block_t, cfg.num_warps, cfg.num_stages, cfg.heads_on_n) == (32, 1, 3, True)
        assert -(-T // cfg.block_t) // splits[B, T] >= cfg.min_split_tiles  # no range shorter than 4 tiles
        assert B * 32 * splits[B, T] <= 4 * 132  # four programs an SM at most
    # measured on an H100 (data/results/h100/quant-splits_*.json): 16 splits at batch 1 were the
    # fastest count at 8k and 32k (26 and 28, aimed at seven an SM, 2-7% slower), 2 at batch 8
    assert splits == {(1, 512): 4, (1, 2048): 16, (1, 8192): 16, (1, 32768): 16, (8, 8192): 2}
    # GQA up to 8 heads a KV head takes the same loop, with no floor on a split's tiles (as timed,
    # data/results/quant-plan-gqa4_nvidia-h100-80gb-hbm3.json)
    for g in (2, 4, 8):
        cfg = quant_config_for(128, g, 8192, cc=(9, 0))
        assert (cfg.block_t, cfg.num_warps, cfg.heads_on_n, cfg.min_split_tiles) == (32, 1, True, 1)
    # larger groups, the paged pool, D = 256 and sm_80 keep the 4-warp, 128-token plan
    for cfg in (quant_config_for(128, 16, 8192, cc=(9, 0)), quant_config_for(128, 1, 8192, cc=(9, 0), paged=True),
                quant_config_for(256, 1, 8192, cc=(9, 0)), quant_config_for(128, 1, 8192, cc=(8, 0))):
        assert (cfg.block_t, cfg.num_warps, cfg.min_split_tiles, cfg.heads_on_n) == (128, 4, 1, False)


def test_the_heads_on_n_loop_refuses_more_than_one_warp():
    q, kf, vf = qkv(1, 2, 2, 64, 64, torch.float16)
    with pytest.raises(ValueError, match="heads_on_n runs one-warp programs; got num_warps=4"):
        quant_flash_decode(q, quantize(kf), quantize(vf), use_dot=True, heads_on_n=True, num_warps=4)


def test_formats_name_their_gpus():
    assert FORMATS["int8"].min_cc == (7, 5) and FORMATS["fp8_e4m3"].min_cc == (8, 9)
