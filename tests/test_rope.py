"""RoPE: the reference, the Triton rotation, the fused RoPE + KV write, RoPE inside attention,
the unfused and fused decode steps, their cost model and benchmark, and notebook 04's checks."""

import math

import pytest
import torch

import labkit
import triton
import triton.language as tl

from labkit import checks
from labkit.checks.core import CheckFailure, TOLERANCE, rel_error
from labkit.rope.write import write_decode_kv, write_kv_rope, write_kv_rope_kernel
from labkit.rope import (apply_rope, apply_rope_interleaved, interleaved_permutation, rope_angles, rope_ops,
                         rope_tables)
from labkit.rope.rotate import rope_kernel, rope_triton

MAX_LEN = 4096


def tables(D, max_len=MAX_LEN):
    return rope_tables(max_len, D)


def expected(x, positions, cos, sin):
    return apply_rope(x.double(), positions, cos.double(), sin.double())


# --- the reference ----------------------------------------------------------------------------
def test_reference_is_a_complex_multiplication():
    # Independent formulation: pair i is the complex number x1[i] + i·x2[i], turned by e^{i·p·θ_i}.
    D, N = 24, 7
    x = torch.randn(N, 3, D, dtype=torch.float64)
    pos = torch.randint(0, 5000, (N, 1))
    z = torch.complex(x[..., : D // 2], x[..., D // 2:])
    theta = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    turned = z * torch.polar(torch.ones_like(theta), pos[..., None].double() * theta)
    cos, sin = rope_tables(5000, D, dtype=torch.float64)
    got = apply_rope(x, pos, cos, sin)
    assert rel_error(got, torch.cat([turned.real, turned.imag], -1)) < 1e-12
    assert torch.allclose(rope_angles(5000, D)[123], 123 * theta)


def test_interleaved_convention_is_a_permutation_of_rotate_half():
    D = 16
    x = torch.randn(5, 2, D, dtype=torch.float64)
    pos = torch.randint(0, 100, (5, 1))
    cos, sin = rope_tables(100, D, dtype=torch.float64)
    c, s = cos[pos], sin[pos]
    gptj = torch.empty_like(x)  # pairs (2i, 2i+1), written out directly
    gptj[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
    gptj[..., 1::2] = x[..., 1::2] * c + x[..., 0::2] * s
    assert rel_error(apply_rope_interleaved(x, pos, cos, sin), gptj) < 1e-12
    perm = interleaved_permutation(D)
    assert torch.equal(apply_rope(x[..., perm], pos, cos, sin), gptj[..., perm])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rope_ops_match_the_reference(dtype):
    D = 64
    cos, sin = tables(D)
    x = torch.randn(4, 6, D).to(dtype)
    pos = torch.randint(0, MAX_LEN, (4, 1))
    got = rope_ops(x, pos, cos, sin)
    assert got.dtype == dtype and rel_error(got, expected(x, pos, cos, sin)) < TOLERANCE[dtype]


def test_reference_rejects_odd_head_dims_and_positions_past_the_tables():
    cos, sin = tables(8, max_len=10)
    with pytest.raises(ValueError, match="even"):
        apply_rope(torch.randn(2, 7), torch.zeros(2, dtype=torch.long), cos, sin)
    with pytest.raises(ValueError, match=r"positions must lie in \[0, 10\)"):
        apply_rope(torch.randn(2, 8), torch.tensor([3, 10]), cos, sin)
    with pytest.raises(ValueError, match="even"):
        rope_tables(10, 7)


# --- the Triton rotation ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("N, H, D, block_h", [(1, 1, 16, None), (5, 7, 24, 4), (9, 3, 64, 2)])
def test_rope_triton_matches_the_reference(dtype, N, H, D, block_h):
    cos, sin = tables(D)
    x = torch.randn(N, H, D).to(dtype)
    pos = torch.cat([torch.tensor([MAX_LEN - 1]), torch.randint(0, MAX_LEN, (N - 1,))])[:N]
    out = torch.full_like(x, float("nan"))
    rope_triton(x, pos, cos, sin, out=out, block_h=block_h)
    assert rel_error(out, expected(x, pos[:, None], cos, sin)) < TOLERANCE[dtype]


def test_rope_triton_rejects_bad_input_by_name():
    cos, sin = tables(8, max_len=16)
    with pytest.raises(ValueError, match="x has head dim 7; RoPE needs an even head dim"):
        rope_triton(torch.randn(2, 1, 7), torch.zeros(2, dtype=torch.long), cos, sin)
    with pytest.raises(TypeError, match="positions has dtype float32"):
        rope_triton(torch.randn(2, 1, 8), torch.zeros(2), cos, sin)
    with pytest.raises(ValueError, match=r"positions must lie in \[0, 16\)"):
        rope_triton(torch.randn(2, 1, 8), torch.tensor([0, 16]), cos, sin)
    with pytest.raises(ValueError, match=r"cos must have shape \[max_len, 4\]"):
        rope_triton(torch.randn(2, 1, 8), torch.zeros(2, dtype=torch.long), *tables(16, 16))


# --- the fused RoPE + KV write --------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_write_decode_kv_contiguous_cache_sequences_at_different_lengths(dtype):
    B, H, T, D = 4, 3, 37, 32
    cos, sin = tables(D)
    k_new, v_new = torch.randn(B, H, D).to(dtype), torch.randn(B, H, D).to(dtype)
    k_cache, v_cache = torch.randn(B, H, T, D).to(dtype), torch.randn(B, H, T, D).to(dtype)
    k0, v0 = k_cache.clone(), v_cache.clone()
    pos = torch.tensor([0, T - 1, 17, 5], dtype=torch.int32)
    write_decode_kv(k_new, v_new, k_cache, v_cache, pos, (cos, sin))
    rows = torch.arange(B)
    assert rel_error(k_cache[rows, :, pos], expected(k_new, pos[:, None], cos, sin)) < TOLERANCE[dtype]
    assert torch.equal(v_cache[rows, :, pos], v_new)
    k_want, v_want = k0.clone(), v0.clone()
    k_want[rows, :, pos], v_want[rows, :, pos] = k_cache[rows, :, pos], v_new
    assert torch.equal(k_cache, k_want) and torch.equal(v_cache, v_want)  # nothing else written


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rope", [True, False])
def test_write_kv_rope_paged_pool_far_positions(dtype, rope):
    R, H, S, D, N = 6, 5, 8, 48, 11
    cos, sin = tables(D)
    flat = torch.randperm(R * S)[:N]
    rows, slots = flat // S, (flat % S).int()
    pos = torch.randint(S, MAX_LEN, (N,))  # far beyond one block: positions are not slots
    k_new, v_new = torch.randn(N, H, D).to(dtype), torch.randn(N, H, D).to(dtype)
    k_cache = torch.full((R, H, S, D), float("nan"), dtype=dtype)
    v_cache = torch.full_like(k_cache, float("nan"))
    write_kv_rope(k_new, v_new, k_cache, v_cache, rows, slots, (cos, sin, pos) if rope else None, block_h=2)
    want = expected(k_new, pos[:, None], cos, sin) if rope else k_new
    assert rel_error(k_cache[rows, :, slots.long()], want) < TOLERANCE[dtype]
    assert torch.equal(v_cache[rows, :, slots.long()], v_new)
    assert int(torch.isfinite(k_cache).sum()) == N * H * D  # exactly the N slots written


def test_write_kv_rope_strided_views():
    N, H, D, R, S = 3, 4, 16, 3, 9
    cos, sin = tables(D)
    qkv = torch.randn(N, 3, H, D)
    big = torch.zeros(2, 4, R, H, S, D)
    rows, slots, pos = torch.arange(N), torch.tensor([8, 0, 3]), torch.tensor([4000, 1, 77])
    write_kv_rope(qkv[:, 1], qkv[:, 2], big[0, 2], big[1, 2], rows, slots, (cos, sin, pos))
    assert rel_error(big[0, 2][rows, :, slots], expected(qkv[:, 1], pos[:, None], cos, sin)) < 1e-5
    assert torch.equal(big[1, 2][rows, :, slots], qkv[:, 2])
    assert int((big != 0).sum()) == 2 * N * H * D


def _write_args(N=2, H=2, D=8, R=3, S=5, dtype=torch.float32):
    cos, sin = tables(D, max_len=20) if D % 2 == 0 else tables(D + 1, max_len=20)
    return dict(k_new=torch.randn(N, H, D, dtype=dtype), v_new=torch.randn(N, H, D, dtype=dtype),
                k_cache=torch.zeros(R, H, S, D, dtype=dtype), v_cache=torch.zeros(R, H, S, D, dtype=dtype),
                rows=torch.arange(N), slots=torch.arange(N), rope=(cos, sin, torch.arange(N)))


@pytest.mark.parametrize("change, error, message", [
    (dict(D=7), ValueError, "k_new has head dim 7; RoPE needs an even head dim"),
    (dict(dtype=torch.float64), TypeError, "k_new has dtype float64"),
    (dict(v_new=torch.randn(2, 2, 6)), ValueError, "v_new must have k_new's shape"),
    (dict(k_cache=torch.zeros(3, 1, 5, 8), v_cache=torch.zeros(3, 1, 5, 8)), ValueError,
     r"k_cache has shape \(3, 1, 5, 8\)"),
    (dict(v_cache=torch.zeros(3, 2, 5, 9)), ValueError, "v_cache must have k_cache's shape"),
    (dict(v_cache=torch.zeros(3, 2, 5, 8, dtype=torch.float16)), TypeError, "v_cache has dtype float16"),
    (dict(rows=torch.arange(2.0)), TypeError, "rows has dtype float32"),
    (dict(slots=torch.arange(3)), ValueError, r"slots must have shape \[2\]"),
    (dict(rows=torch.tensor([0, 3])), ValueError, r"rows must lie in \[0, 3\)"),
    (dict(slots=torch.tensor([-1, 0])), ValueError, r"slots must lie in \[0, 5\)"),
    (dict(rope=(torch.zeros(20, 4), torch.zeros(20, 4), torch.tensor([0, 20]))), ValueError,
     r"positions must lie in \[0, 20\)"),
    (dict(rope=(torch.zeros(20, 3), torch.zeros(20, 3), torch.arange(2))), ValueError, r"cos must have shape"),
    (dict(rope=(torch.zeros(20, 4), torch.zeros(20, 4))), TypeError, r"rope must be a tuple \(cos, sin, positions\)"),
    (dict(k_cache=torch.zeros(3, 2, 8, 5).transpose(2, 3)), ValueError, "k_cache must have a contiguous last"),
    # the kernel takes one set of strides for k_new and v_new, one for the caches; contiguous tables
    (dict(v_new=torch.randn(2, 3, 8)[:, :2]), ValueError, r"v_new must have k_new's strides \(16, 8, 1\)"),
    (dict(v_cache=torch.zeros(3, 2, 6, 8)[:, :, :5]), ValueError,
     r"v_cache must have k_cache's strides \(80, 40, 8, 1\) \(row, head, slot, d\).*got \(96, 48, 8, 1\)"),
    (dict(rope=(torch.zeros(20, 8)[:, :4], torch.zeros(20, 4), torch.arange(2))), ValueError,
     r"cos must be contiguous \(row p at p \* 4\), got strides \(8, 1\)"),
    (dict(rope=(torch.zeros(20, 4), torch.zeros(4, 20).t(), torch.arange(2))), ValueError, "sin must be contiguous"),
])
def test_write_kv_rope_rejects_bad_input_by_name(change, error, message):
    args = _write_args(**{k: v for k, v in change.items() if k in ("D", "dtype")})
    args.update({k: v for k, v in change.items() if k not in ("D", "dtype")})
    with pytest.raises(error, match=message):
        write_kv_rope(**args)


def test_unchecked_indices_never_write_outside_the_cache():
    args = _write_args()
    args["rows"] = torch.tensor([0, 7])  # row 7 does not exist
    write_kv_rope(**args, check_indices=False)
    assert int((args["k_cache"] != 0).any(-1).sum()) == 2  # token 0's two heads only


@pytest.mark.parametrize("bad", ["slot", "position", "negative row"])
def test_a_token_out_of_bounds_is_skipped_the_others_written(bad):
    N, H, D, R, S = 4, 3, 10, 2, 5
    cos, sin = tables(D, max_len=9)
    k_new, v_new = torch.randn(N, H, D), torch.randn(N, H, D)
    k_full, v_full = (torch.full((R + 1, H, S + 1, D), float("nan")) for _ in range(2))
    k_cache, v_cache = k_full[:R, :, :S], v_full[:R, :, :S]  # the margin catches a stray write
    rows, slots, pos = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 4, 2, 3]), torch.tensor([0, 8, 3, 5])
    index = {"slot": (slots, 5), "position": (pos, 9), "negative row": (rows, -1)}[bad]
    index[0][2] = index[1]  # token 2 points past the cache (or the tables)
    write_kv_rope(k_new, v_new, k_cache, v_cache, rows, slots, (cos, sin, pos), check_indices=False)
    assert int(torch.isfinite(k_full).sum()) == int(torch.isfinite(v_full).sum()) == 3 * H * D
    keep = torch.tensor([0, 1, 3])
    assert rel_error(k_cache[rows[keep], :, slots[keep]], expected(k_new[keep], pos[keep, None], cos, sin)) < 1e-5
    assert torch.equal(v_cache[rows[keep], :, slots[keep]], v_new[keep])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("N, H, D, block_h, rope", [(7, 5, 40, 2, True), (3, 7, 22, 4, True), (5, 3, 7, None, False),
                                                     (1, 1, 2, None, True)])
def test_tuple_argument_kernel_on_shapes_no_block_divides(dtype, N, H, D, block_h, rope):
    # Heads not a multiple of BLOCK_H, D/2 not a power of two (masked columns), k and v sliced from
    # one qkv tensor (shared strides), the cache a layer of a bigger one, rows and slots scattered.
    R, S = 3, 11
    cos, sin = tables(D + D % 2, max_len=50)
    qkv = torch.randn(N, 3, H, D).to(dtype)
    big = torch.full((2, 2, R, H, S, D), float("nan")).to(dtype)
    flat = torch.randperm(R * S)[:N]
    rows, slots, pos = flat // S, (flat % S).int(), torch.randint(0, 50, (N,))
    write_kv_rope(qkv[:, 1], qkv[:, 2], big[0, 1], big[1, 1], rows, slots, (cos, sin, pos) if rope else None,
                  block_h=block_h)
    want = expected(qkv[:, 1], pos[:, None], cos, sin) if rope else qkv[:, 1]
    assert rel_error(big[0, 1][rows, :, slots.long()], want) < TOLERANCE[dtype]
    assert torch.equal(big[1, 1][rows, :, slots.long()], qkv[:, 2])
    assert int(torch.isfinite(big).sum()) == 2 * N * H * D  # those slots, nothing else


def test_size_one_dims_need_no_matching_strides():
    # A stride of a size-1 dim is never used (its index is 0): k_new and v_new of one token
    # may disagree on it, as views of one token often do.
    args = _write_args(N=1)
    args["v_new"] = torch.randn(1, 9, 8)[:, :2]  # token stride 72, k_new's 16
    write_kv_rope(**args)
    assert torch.equal(args["v_cache"][0, :, 0], args["v_new"][0])


# --- RoPE inside attention (issue 4's kernel) ----------------------------------------------
@pytest.mark.parametrize("impl", ["flash_decode", "triton_decode"])
@pytest.mark.parametrize("dtype, Hq, Hkv", [(torch.float32, 4, 4), (torch.float16, 4, 2)])
def test_attention_rotates_q_as_it_loads_it(impl, dtype, Hq, Hkv):
    from labkit.attention import reference_decode
    from labkit.attention import triton_decode as td

    B, T, D = 3, 45, 16
    cos, sin = tables(D)
    q = torch.randn(B, Hq, D).to(dtype)
    k, v = torch.randn(B, Hkv, T, D).to(dtype), torch.randn(B, Hkv, T, D).to(dtype)
    pos = torch.tensor([0, 1234, MAX_LEN - 1], dtype=torch.int32)
    lengths = torch.tensor([1, 33, T], dtype=torch.int32)
    kw = dict(num_splits=3) if impl == "flash_decode" else {}
    got = getattr(td, impl)(q, k, v, lengths=lengths, rope=(cos, sin, pos), **kw)
    want = reference_decode(expected(q, pos[:, None].long(), cos, sin), k, v, lengths=lengths)
    assert rel_error(got, want) < TOLERANCE[dtype]


# --- the decode step, unfused and fused --------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_unfused_and_fused_steps_match_the_reference(dtype):
    from labkit.rope.fusion import fused_decode_step, reference_decode_step, unfused_decode_step

    B, Hq, Hkv, T, D = 3, 4, 2, 70, 16
    cos, sin = tables(D, max_len=T)
    q, k_new, v_new = torch.randn(B, Hq, D).to(dtype), torch.randn(B, Hkv, D).to(dtype), torch.randn(B, Hkv, D).to(dtype)
    k_cache, v_cache = torch.randn(B, Hkv, T, D).to(dtype), torch.randn(B, Hkv, T, D).to(dtype)
    pos = torch.tensor([0, T - 1, 40], dtype=torch.int32)
    out, k_want, v_want = reference_decode_step(q, k_new, v_new, k_cache, v_cache, pos, cos, sin)
    for step in (unfused_decode_step, fused_decode_step):
        k_c, v_c = k_cache.clone(), v_cache.clone()
        assert rel_error(step(q, k_new, v_new, k_c, v_c, pos, cos, sin), out) < TOLERANCE[dtype], step.__name__
        slot = (torch.arange(B), slice(None), pos.long())  # the slots the step writes
        assert rel_error(k_c[slot], k_want[slot]) < TOLERANCE[dtype], step.__name__
        assert torch.equal(v_c, v_want.to(dtype)), step.__name__
        k_c[slot] = k_cache[slot]  # put the old slots back: nothing else may have changed
        assert torch.equal(k_c, k_cache), step.__name__


def test_decode_step_costs_count_the_code_as_written():
    from labkit.rope.fusion import count_torch_ops, decode_step_costs, summarize_costs

    B, Hq, Hkv, D, s = 2, 8, 4, 64, 2
    short, long = (summarize_costs(decode_step_costs(B, Hq, Hkv, T, D, torch.float16)) for T in (512, 4096))
    # Fusion saves launches and bytes, and the saving does not grow with the context.
    assert short["saved"] == long["saved"]
    assert short["saved"]["launches"] >= 10 and short["fused"]["launches"] == 2
    # It saves at least the rotated q and k's round trip through memory (write, then read back).
    assert short["saved"]["bytes"] >= 2 * B * (Hq + Hkv) * D * s
    # Attention dominates the bytes: the K and V reads grow 8x from 512 to 4096 tokens.
    kv = lambda T: 2 * B * Hkv * T * D * s  # noqa: E731
    assert long["fused"]["bytes"] - short["fused"]["bytes"] == kv(4096) - kv(512)
    # The counter sees every elementwise op of rope_ops (views launch nothing).
    x = torch.empty(B, Hq, D, dtype=torch.float16, device="meta")
    cos = torch.empty(16, D // 2, device="meta")
    launches, nbytes = count_torch_ops(lambda t: t * 2 + 1, x)
    assert launches == 2 and nbytes == 4 * x.numel() * s
    launches, _ = count_torch_ops(rope_ops, x, torch.zeros(B, 1, dtype=torch.long, device="meta"), cos, cos)
    assert launches == 11  # 2 gathers, 2 casts to fp16, 4 products, a sum, a difference, a concatenation


def test_bench_rope_in_sim_mode_checks_correctness_and_reports_no_times():
    from labkit.bench.rope import KERNELS, bench_rope, format_fusion_summary, fusion_summary

    records = bench_rope(batches=(1, 2), contexts=(9, 40), dtype=torch.float32)
    assert [r.kernel for r in records[:len(KERNELS)]] == list(KERNELS) and len(records) == 4 * len(KERNELS)
    for r in records:
        assert r.time_ms is None and r.gbps is None and r.extra["rel_error"] < 1e-5 and r.bytes > 0
    by = {r.kernel: r for r in records if r.shape == records[0].shape}
    assert by["unfused step"].extra["launches"] > by["fused step"].extra["launches"] == 2
    assert by["unfused step"].extra["as_run_bytes"] > by["fused step"].extra["as_run_bytes"]
    assert all(row["rope_overhead"] is None for row in fusion_summary(records))
    assert "rope+attn / attn" in format_fusion_summary(records)


def test_fusion_summary_ratios_and_targets():
    from labkit.bench.records import Record
    from labkit.bench.rope import format_fusion_summary, fusion_summary

    times = {"flash": 10.0, "flash+rope": 10.2, "unfused step": 20.0, "fused step": 12.0}
    recs = [Record(k, {"B": 1, "T": 512}, "float16", 1, t) for k, t in times.items()]
    [row] = fusion_summary(recs)
    assert math.isclose(row["rope_overhead"], 1.02) and math.isclose(row["step_speedup"], 20 / 12)
    assert "MISSED" not in format_fusion_summary(recs)
    recs[1].time_ms = 11.0
    assert "MISSED" in format_fusion_summary(recs)


# --- compiling for the T4 ------------------------------------------------------------------------
def _write_signature(dtype: str) -> dict:
    sig = {n: f"*{dtype}" for n in ("k_new_ptr", "v_new_ptr", "k_cache_ptr", "v_cache_ptr")}
    sig.update(rows_ptr="*i64", slots_ptr="*i32", pos_ptr="*i32", cos_ptr="*fp32", sin_ptr="*fp32")
    # the tuple arguments, as a launch types them: (H, D, HALF), (num_rows, num_slots, max_pos), strides
    sig.update(sizes=("i32",) * 3, limits=("i32",) * 3, new_strides=("i32",) * 2, cache_strides=("i32",) * 3)
    return sig


def test_kernels_compile_for_sm75_within_64kb_shared():
    from labkit.testing import compile_triton_many_for_t4

    rope_sig = {"x_ptr": "*fp16", "out_ptr": "*fp16", "pos_ptr": "*i32", "cos_ptr": "*fp32", "sin_ptr": "*fp32",
                "H": "i32", "HALF": "i32"}
    builds = compile_triton_many_for_t4([
        (write_kv_rope_kernel, _write_signature("fp16"), {"ROPE": True, "BLOCK_H": 32, "BLOCK_HALF": 64}, 4),
        (write_kv_rope_kernel, _write_signature("fp32"), {"ROPE": False, "BLOCK_H": 16, "BLOCK_HALF": 128}, 4),
        (rope_kernel, rope_sig, {"BLOCK_H": 32, "BLOCK_HALF": 64}, 4),
    ])
    assert [b.name for b in builds] == ["write_kv_rope_kernel", "write_kv_rope_kernel", "rope_kernel"]
    assert all(b.cubin_bytes > 0 and b.shared_bytes <= 64 * 1024 for b in builds)


def test_notebook_write_kernel_solution_compiles_for_sm75_and_sm90(tmp_path):
    """The master's answer to 04.write_kv_rope, as a module, compiled with its tuple arguments."""
    import importlib.util
    from pathlib import Path

    import nbformat

    from labkit.testing import compile_triton_many_for_t4

    nb = nbformat.read(Path(__file__).resolve().parents[1] / "solutions" / "04_rope_fusion.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if c.metadata.get("labkit", {}).get("exercise") == "04.write_kv_rope"]
    path = tmp_path / "nb04_write_kernel.py"
    path.write_text("import labkit\nimport triton\nimport triton.language as tl\n\n" + cell.source + "\n")
    spec = importlib.util.spec_from_file_location("nb04_write_kernel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    requests = [(module.write_kv_rope_kernel, _write_signature(dt), {"ROPE": rope, "BLOCK_H": 4, "BLOCK_HALF": 64}, 4)
                for dt, rope in (("fp16", True), ("fp32", False), ("fp16", True))]
    builds = compile_triton_many_for_t4(requests, ccs=[(7, 5), (7, 5), (9, 0)])
    assert all(b.cubin_bytes > 0 for b in builds)


# --- notebook 04's checks ------------------------------------------------------------------------
@triton.jit
def _unrotated_kernel(x_ptr, out_ptr, pos_ptr, cos_ptr, sin_ptr, H, HALF,
                      BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    # A plausible mistake: copies x without rotating it.
    n = tl.program_id(0)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.arange(0, 2 * BLOCK_HALF)
    mask = (heads[:, None] < H) & (cols[None, :] < 2 * HALF)
    offs = (n * H + heads[:, None]) * (2 * HALF) + cols[None, :]
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask), mask=mask)


@triton.jit
def _stub_kernel(x_ptr, out_ptr, pos_ptr, cos_ptr, sin_ptr, H, HALF, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    raise NotImplementedError("Exercise 04.rope_kernel: your code here")


@triton.jit
def _stub_write_kernel(k_new_ptr, v_new_ptr, k_cache_ptr, v_cache_ptr, rows_ptr, slots_ptr, pos_ptr, cos_ptr, sin_ptr,
                       sizes, limits, new_strides, cache_strides, ROPE: tl.constexpr, BLOCK_H: tl.constexpr,
                       BLOCK_HALF: tl.constexpr):
    raise NotImplementedError("Exercise 04.write_kv_rope: your code here")


def _stub(*args, **kwargs):
    raise NotImplementedError("Exercise 04.rope: your code here")


def test_checks_pass_right_answers_and_refuse_labkits_own(capsys):
    # a right answer of the student's own passes (here: code that calls labkit's, which the grader
    # flags by reading the cell; the check itself sees only the function it is given)
    checks.nb04.check_rope(lambda x, positions, cos, sin: apply_rope(x, positions, cos, sin))
    out = capsys.readouterr().out
    assert "04.rope: all 7 properties pass" in out
    for check, answer in ((checks.nb04.check_rope, apply_rope), (checks.nb04.check_rope, rope_ops),
                          (checks.nb04.check_rope_kernel, rope_kernel),
                          (checks.nb04.check_write_kv_rope, write_kv_rope_kernel)):
        with pytest.raises(CheckFailure, match="labkit's own"):
            check(answer)


@pytest.mark.parametrize("check, wrong, reason", [
    ("check_rope", _stub, "not started"),
    ("check_rope", lambda x, p, c, s: apply_rope_interleaved(x, p, c, s), "relative error"),  # the other pairing
    ("check_rope", lambda x, p, c, s: x, "relative error"),
    ("check_rope_kernel", _stub_kernel, "not started"),
    ("check_rope_kernel", _unrotated_kernel, "relative error"),
    ("check_write_kv_rope", _stub_write_kernel, "not started"),
    ("check_write_kv_rope", rope_kernel, "labkit's own"),  # the wrong kernel entirely, and labkit's
])
def test_checks_fail_unstarted_or_wrong_work(check, wrong, reason, capsys):
    with pytest.raises(CheckFailure, match=reason):
        getattr(checks.nb04, check)(wrong)


def test_plot_rope_rotation():
    import matplotlib

    matplotlib.use("Agg")
    from labkit.viz.rope import plot_rope_rotation

    fig = plot_rope_rotation(head_dim=8, positions=6)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) >= 2
