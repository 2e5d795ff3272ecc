"""Naive three-pass attention, the fused Numba kernel (split-K), the Numba bridge, the online
softmax, notebook 01/02 checks, and T4 PTX compilation. Sim mode, tiny sizes."""

import math
import random
import threading
import time

import numpy as np
import pytest
import torch

import labkit  # noqa: F401  (first: it puts Numba in sim mode before numba is imported)
from numba import cuda  # after labkit: the simulator in sim mode (a module global, so it can swap it)
from labkit.attention import numba_bridge
from labkit.attention import decode_attention, decode_bytes, reference_decode
from labkit.attention import naive, online_softmax
from labkit.attention.numba_exercises import launch_one_pass
from labkit.attention.numba_fused import (GPU_CONFIG, SIM_CONFIG, SM90_CONFIG, launch_plan, numba_decode,
                                         plan, workspace)
from labkit.bench.passes import bench_naive_passes, kernel_launches
from labkit.checks import CheckFailure, nb01, nb02, rel_error
from labkit.testing import compile_numba_ptx_for_t4
from labkit.checks.core import TOLERANCE
from labkit.course.solutions import NB02_KERNEL_PREAMBLE, load_fused_kernel


def inputs(B, Hq, Hkv, T, D, dtype, seed=None):
    g = torch.Generator().manual_seed(random.randrange(1 << 30) if seed is None else seed)
    return tuple(torch.randn(s, generator=g).to(dtype) for s in ((B, Hq, D), (B, Hkv, T, D), (B, Hkv, T, D)))


# --- naive ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B,Hq,Hkv,T,D", [(1, 2, 2, 1, 16), (2, 8, 2, 37, 64), (3, 4, 1, 5, 128)])
def test_naive_matches_reference(B, Hq, Hkv, T, D, dtype):
    q, k, v = inputs(B, Hq, Hkv, T, D, dtype)
    out = naive.naive_decode(q, k, v)
    assert out.dtype == dtype and out.shape == (B, Hq, D)
    assert rel_error(out, reference_decode(q, k, v)) <= TOLERANCE[dtype]
    scaled = decode_attention(q, k, v, impl="naive", scale=0.3)
    assert rel_error(scaled, reference_decode(q, k, v, scale=0.3)) <= TOLERANCE[dtype]


def test_naive_passes_chain_to_the_whole_and_bytes_add_up():
    B, Hq, Hkv, T, D = 2, 6, 3, 11, 16
    q, k, v = inputs(B, Hq, Hkv, T, D, torch.float32)
    passes = naive.naive_passes(q, k, v)
    assert [p.name for p in passes] == list(naive.PASSES)
    assert passes[0].fn(*passes[0].args).shape == (B, Hq, T)
    assert torch.equal(passes[1].fn(*passes[1].args), passes[2].args[0])  # pass 3 reads what pass 2 wrote
    torch.testing.assert_close(passes[2].fn(*passes[2].args), naive.naive_decode(q, k, v))
    per = naive.pass_bytes(B, Hq, Hkv, T, D, 4)
    assert [p.bytes for p in passes] == [per[n] for n in naive.PASSES]
    assert naive.extra_bytes(B, Hq, Hkv, T, D, 4) == 4 * B * Hq * T * 4
    assert sum(per.values()) == decode_bytes(B, Hq, Hkv, T, D, 4) + 16 * B * Hq * T


def test_kernel_launches_lists_the_four_ops_of_the_naive_step():
    q, k, v = inputs(1, 4, 2, 9, 16, torch.float32)
    names, source = kernel_launches(lambda: naive.naive_decode(q, k, v))
    assert source == "aten ops" and names == ["aten.mul", "aten.bmm", "aten._softmax", "aten.bmm"]


def test_bench_naive_passes_in_sim_checks_and_records_bytes():
    recs = bench_naive_passes(B=1, Hq=2, Hkv=1, T=19, D=16, dtype=torch.float16, roofline_gbps=None)
    assert [r.kernel for r in recs] == ["scores", "softmax", "output", "naive"]
    assert all(r.time_ms is None and r.gbps is None for r in recs)  # sim mode: nothing is timed
    assert recs[-1].bytes == decode_bytes(1, 2, 1, 19, 16, 2)
    assert recs[-1].extra["bytes_moved"] == sum(r.bytes for r in recs[:3])
    assert recs[-1].extra["rel_error"] <= 2e-3


# --- the fused Numba kernel ----------------------------------------------------------------------
# Tile (sim) is 8 tokens: T = 1, under a tile, a multiple of it, and ragged; splits chosen and forced;
# GQA with a group larger than one block serves (SIM_CONFIG.max_group = 4).
CASES = [
    (1, 2, 2, 1, 64, None),
    (2, 4, 2, 5, 128, None),
    (1, 2, 2, 16, 64, 1),
    (1, 3, 1, 29, 64, 3),
    (1, 8, 1, 19, 64, 2),
    (2, 2, 2, 40, 128, None),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B,Hq,Hkv,T,D,splits", CASES)
def test_numba_matches_reference_and_writes_every_element(B, Hq, Hkv, T, D, splits, dtype):
    q, k, v = inputs(B, Hq, Hkv, T, D, dtype)
    out = torch.full_like(q, float("nan"))
    got = numba_decode(q, k, v, splits=splits, out=out)
    assert got.data_ptr() == out.data_ptr() and got.dtype == dtype
    assert torch.isfinite(got).all()
    assert rel_error(got, reference_decode(q, k, v)) <= TOLERANCE[dtype]


def test_numba_scale_and_registry():
    q, k, v = inputs(1, 2, 2, 13, 64, torch.float32)
    got = decode_attention(q, k, v, impl="numba", scale=0.2)
    assert rel_error(got, reference_decode(q, k, v, scale=0.2)) <= 1e-5


def test_numba_split_results_agree_with_one_split():
    q, k, v = inputs(1, 2, 2, 40, 64, torch.float32)
    one = numba_decode(q, k, v, splits=1)
    many = numba_decode(q, k, v, splits=5)
    assert plan(1, 2, 2, 40, splits=5).splits == 5
    assert plan(1, 2, 2, 45, splits=5).splits == 3  # chunks round up to whole tiles (8 in sim)
    assert rel_error(many, one) <= 1e-6


def test_plan_fills_the_gpu_and_never_leaves_a_split_empty():
    p = plan(1, 32, 32, 8192, cfg=GPU_CONFIG, sms=132)
    assert p.grid == (32, p.splits) and p.splits * p.chunk >= 8192 and (p.splits - 1) * p.chunk < 8192
    n = p.grid[0] * p.grid[1]
    assert n >= 3 * 132 and n / (-(-n // 528) * 528) >= 0.95  # several blocks per SM, in whole waves of 4
    assert plan(1, 32, 32, 8192, cfg=GPU_CONFIG, sms=40).splits < p.splits  # fewer SMs, fewer splits
    assert plan(1, 32, 8, 100, cfg=GPU_CONFIG, sms=132).heads_per_block == 4  # one read of K/V per group
    assert plan(1, 12, 1, 100, cfg=GPU_CONFIG, sms=132).heads_per_block == 4  # group 12: 3 blocks of 4
    assert plan(1, 7, 1, 100, cfg=GPU_CONFIG, sms=132).heads_per_block == 1  # 7 is prime: one head per block
    rng = random.Random(0)
    for _ in range(300):
        B, Hkv, g, T = rng.randint(1, 8), rng.choice([1, 2, 8, 32]), rng.choice([1, 2, 3, 4, 8]), rng.randint(1, 70000)
        for cfg in (GPU_CONFIG, SIM_CONFIG):
            forced = rng.choice([None, rng.randint(1, 100)])
            p = plan(B, Hkv * g, Hkv, T, cfg=cfg, sms=rng.choice([2, 40, 132]), splits=forced)
            assert p.chunk % cfg.tile == 0 and (p.splits - 1) * p.chunk < T <= p.splits * p.chunk
            assert (Hkv * g) % (Hkv * p.heads_per_block) == 0 and p.heads_per_block <= cfg.max_group


@pytest.mark.parametrize("make,error,words", [
    (lambda q, k, v: (q.double(), k.double(), v.double()), TypeError, "q has dtype float64"),
    (lambda q, k, v: (q.bfloat16(), k.bfloat16(), v.bfloat16()), TypeError, "expected one of float16, float32"),
    (lambda q, k, v: (q[..., :32].contiguous(), k[..., :32].contiguous(), v[..., :32].contiguous()), ValueError,
     "head dim 32 is not supported"),
    (lambda q, k, v: (torch.cat([q, q[:, :1]], 1), k, v), ValueError, "multiple of k's heads"),
    (lambda q, k, v: (q, k.transpose(2, 3), v), ValueError, "k must be contiguous"),
    (lambda q, k, v: (q, k, v[:, :, :-1].contiguous()), ValueError, "k and v must have the same shape"),
    (lambda q, k, v: (q.to("meta"), k, v), ValueError, "q is on meta"),
    (lambda q, k, v: (q, k, v.numpy()), TypeError, "v must be a torch.Tensor"),
])
def test_numba_bad_input_is_a_clear_error(make, error, words):
    q, k, v = make(*inputs(1, 2, 2, 9, 64, torch.float32))
    with pytest.raises(error, match=words):
        numba_decode(q, k, v)


def test_numba_bad_out_and_splits():
    q, k, v = inputs(1, 2, 2, 9, 64, torch.float32)
    with pytest.raises(TypeError, match="out has dtype float16"):
        numba_decode(q, k, v, out=torch.empty_like(q).half())
    with pytest.raises(ValueError, match="out must have q's shape"):
        numba_decode(q, k, v, out=torch.empty(1, 2, 63))
    with pytest.raises(ValueError, match="splits must be >= 1"):
        numba_decode(q, k, v, splits=0)


def test_bridge_in_sim_mode_is_a_zero_copy_numpy_view():
    t = torch.zeros(3, 4)
    view = numba_bridge.as_numba(t)
    assert isinstance(view, np.ndarray)
    view[1, 2] = 5.0
    assert t[1, 2] == 5.0
    assert numba_bridge.torch_stream() == 0


def test_simulated_shared_arrays_are_one_per_block_when_threads_race(monkeypatch):
    """The simulator's shared-array lookup and store must be atomic. A dict that sleeps after
    each lookup holds every thread between the two: unlocked, each of 8 threads gets its own."""
    from numba.cuda.simulator import kernelapi

    class SlowLookup(dict):
        def get(self, key, default=None):
            found = super().get(key, default)
            time.sleep(0.005)  # a thread switch here, before the store, is what CI once hit
            return found

    assert getattr(kernelapi.FakeCUDAShared.array, "_labkit", False)
    shared = kernelapi.FakeCUDAShared(0)
    shared._allocations = SlowLookup()
    start, got = threading.Barrier(8), []

    def thread():
        start.wait()
        got.append(shared.array(16, np.float32))  # one source line: one array for the block

    threads = [threading.Thread(target=thread) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and len({id(a) for a in got}) == 1
    assert got[0].shape == (16,) and got[0].dtype == np.float32


def test_sim_mode_plans_for_the_t4_in_triton_and_few_sms_in_numba():
    from labkit.attention.numba_fused import SIM_SMS, plan
    from labkit.attention.splits import GPU_SMS, sm_count

    assert sm_count() == GPU_SMS["T4"] and sm_count(sim=SIM_SMS) == SIM_SMS == 2
    # Numba's simulator plans its splits for SIM_SMS: 1 block of 2 heads on 2 SMs asks for more splits than 40 would
    assert plan(1, 2, 1, 256).splits != plan(1, 2, 1, 256, sms=40).splits


def test_specialized_kernels_are_cached_per_argument_types():
    class FakeKernel:
        def __init__(self):
            self.calls = []

        def specialize(self, *args):
            self.calls.append(args)
            return ("specialized", len(self.calls))

    kern = FakeKernel()
    a32, b32, a16 = torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.float16)
    first = numba_bridge._specialized(kern, (a32, np.float32(1.0), 3), ["converted"])
    assert numba_bridge._specialized(kern, (b32, np.float32(2.0), 5), ["other"]) == first  # same types: cached
    assert numba_bridge._specialized(kern, (a16, np.float32(1.0), 3), ["x"]) != first  # fp16: a new one
    assert numba_bridge._specialized(kern, (a32.t(), np.float32(1.0), 3), ["y"]) != first  # not contiguous
    assert len(kern.calls) == 3 and kern.calls[0] == ("converted",)


def test_resident_blocks_asks_the_drivers_occupancy_calculator(monkeypatch):
    """The GPU path, with the compiled kernel and the device faked: blocks per SM are the
    cooperative-grid limit over the SM count, cached per specialization and block size."""
    import numba.cuda

    asked = []

    class Compiled:  # what a specialized dispatcher holds: one compiled kernel
        def max_cooperative_grid_blocks(self, threads):
            asked.append(threads)
            return 3 * 132 if threads == 256 else 132

    class Dispatcher:
        overloads = {"sig": Compiled()}

        def specialize(self, *args):
            return self

    class Device:
        MULTIPROCESSOR_COUNT = 132

    monkeypatch.setattr(numba_bridge.runtime, "is_sim", lambda: False)
    monkeypatch.setattr(numba.cuda, "get_current_device", lambda: Device(), raising=False)
    kernel = Dispatcher()
    assert numba_bridge.resident_blocks(kernel, 256, 1, np.float32(2.0)) == 3
    assert numba_bridge.resident_blocks(kernel, 256, 7, np.float32(5.0)) == 3  # same types: cached
    assert numba_bridge.resident_blocks(kernel, 1024, 1, np.float32(2.0)) == 1
    assert asked == [256, 1024]


def test_launch_one_pass_poisons_its_output_and_validates():
    @cuda.jit
    def writes_first_half(q, k, v, out, scale):
        if cuda.threadIdx.x < q.shape[2] // 2:
            out[cuda.blockIdx.x // q.shape[1], cuda.blockIdx.x % q.shape[1], cuda.threadIdx.x] = scale

    q, k, v = inputs(1, 2, 1, 3, 8, torch.float32)
    out = launch_one_pass(writes_first_half, q, k, v, scale=0.5, threads=8)
    assert torch.all(out[..., :4] == 0.5) and torch.isnan(out[..., 4:]).all()
    with pytest.raises(ValueError, match="larger than the kernel's shared query buffer"):
        launch_one_pass(writes_first_half, *inputs(1, 1, 1, 2, 256, torch.float32), threads=8)


# --- the online softmax --------------------------------------------------------------------------
def test_online_softmax_streams_and_merges_exactly():
    g = torch.Generator().manual_seed(1)
    scores, values = torch.randn(23, generator=g, dtype=torch.float64) * 5, torch.randn(23, 3, generator=g).double()
    want = online_softmax.softmax_attention(scores, values)
    for chunks in ([23], [1] * 23, [5, 1, 17]):
        last = online_softmax.stream(scores, values, chunks)[-1]
        torch.testing.assert_close(last.acc / last.l, want, rtol=1e-13, atol=0)
        assert last.m == float(scores.max())
    a = online_softmax.stream(scores[:10], values[:10], [10])[-1]
    b = online_softmax.stream(scores[10:], values[10:], [4, 9])[-1]
    merged = online_softmax.merge(a, b)
    torch.testing.assert_close(merged.acc / merged.l, want, rtol=1e-13, atol=0)
    with pytest.raises(ValueError, match="sum to 22"):
        online_softmax.stream(scores, values, [22])


# --- notebook checks: pass with the reference, fail when wrong or unstarted ----------------------
def _unstarted(*args, **kwargs):
    raise NotImplementedError("Exercise: your code here")


# The checks reject an answer that is, or calls, labkit's own implementation of the exercise, so the
# right answers here are written out rather than borrowed from labkit.
def _naive(q, k, v, scale=None):
    B, Hq, D = q.shape
    grouped = (q * (D ** -0.5 if scale is None else scale)).view(B, k.shape[1], Hq // k.shape[1], D)
    return torch.matmul(torch.softmax(torch.matmul(grouped, k.transpose(-1, -2)), dim=-1), v).view(B, Hq, D)


def _pass_bytes(B, Hq, Hkv, T, D, itemsize):
    q_or_out, kv, inter = B * Hq * D, B * Hkv * T * D, B * Hq * T
    return {"scores": itemsize * (q_or_out + kv + inter), "softmax": itemsize * 2 * inter,
            "output": itemsize * (inter + kv + q_or_out)}


def _online_update(m, l, acc, scores, values):  # noqa: E741
    m_new = max(m, scores.max().item())
    alpha = math.exp(m - m_new)
    p = torch.exp(scores - m_new)
    return m_new, l * alpha + p.sum().item(), acc * alpha + p @ values


def test_nb01_checks_pass_and_fail():
    nb01.check_naive_decode(_naive)
    nb01.check_pass_bytes(_pass_bytes)
    with pytest.raises(CheckFailure, match="labkit's own"):
        nb01.check_naive_decode(naive.naive_decode)
    with pytest.raises(CheckFailure, match="not started"):
        nb01.check_naive_decode(_unstarted)

    def no_max_subtraction(q, k, v, scale=None):  # overflows on large scores
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        s = torch.einsum("bhd,bhtd->bht", q, k) * (scale or q.shape[-1] ** -0.5)
        return torch.einsum("bht,bhtd->bhd", s.exp() / s.exp().sum(-1, keepdim=True), v)

    with pytest.raises(CheckFailure, match=r"1 of 8 properties failed[\s\S]*large scores do not overflow"):
        nb01.check_naive_decode(no_max_subtraction)

    def forgets_softmax_round_trip(B, Hq, Hkv, T, D, itemsize):
        per = _pass_bytes(B, Hq, Hkv, T, D, itemsize)
        return {**per, "softmax": itemsize * B * Hq * T}

    with pytest.raises(CheckFailure, match="softmax pass bytes"):
        nb01.check_pass_bytes(forgets_softmax_round_trip)


def test_nb02_online_update_check_fails_without_rescaling():
    nb02.check_online_update(_online_update)
    with pytest.raises(CheckFailure, match="labkit's own"):
        nb02.check_online_update(online_softmax.online_update)

    def no_rescale(m, l, acc, scores, values):
        m_new = max(m, scores.max().item())
        p = torch.exp(scores - m_new)
        return m_new, l + p.sum().item(), acc + p @ values

    with pytest.raises(CheckFailure, match="every chunk raises the max"):
        nb02.check_online_update(no_rescale)
    with pytest.raises(CheckFailure, match="7 of 7 properties failed"):
        nb02.check_online_update(_unstarted)


def test_nb02_kernel_check_catches_a_dropped_tail_and_unwritten_elements():
    block = 8

    def drops_ragged_tail(q, k, v, scale=None):  # only whole tiles: wrong when T is not a multiple
        T = k.shape[2]
        keep = max(block, T - T % block) if T >= block else T
        return _naive(q, k[:, :, :keep].contiguous(), v[:, :, :keep].contiguous(), scale=scale)

    with pytest.raises(CheckFailure) as info:
        nb02.check_fused_kernel(drops_ragged_tail, block=block)
    assert "[T not a multiple of the block]" in str(info.value) and "[T = 1]" not in str(info.value)

    def misses_last_head(q, k, v, scale=None):
        out = _naive(q, k, v, scale=scale).clone()
        out[:, -1] = float("nan")
        return out

    with pytest.raises(CheckFailure, match="NaN or inf"):
        nb02.check_fused_kernel(misses_last_head, block=block)


def test_nb02_solution_kernel_from_the_master_passes_its_check():
    fused_decode, tile = load_fused_kernel()
    assert tile == 8  # sim mode
    q, k, v = inputs(1, 2, 1, 11, 16, torch.float16)
    assert rel_error(fused_decode(q, k, v), reference_decode(q, k, v)) <= 2e-3


# --- the T4: every Numba kernel compiles to PTX for compute capability 7.5 -----------------------
def _sig(dtype):
    a1 = f"{dtype}[::1]"
    return f"void({a1}, int64[::1], int64[::1], {a1}, float32[::1], int32[::1], float32, int64, int64, int64, int64)"


def test_numba_kernels_compile_for_t4(tmp_path, monkeypatch):
    from labkit.course.solutions import write_exercise_module

    # The notebook's exercise kernel, as a module the child process can import; its tile is the GPU's.
    module = tmp_path / "nb02_exercise_kernel.py"
    write_exercise_module("02_numba_fused", "02.fused_kernel", module, preamble=NB02_KERNEL_PREAMBLE)
    module.write_text(module.read_text().replace("labkit.is_sim()", "False"))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{monkeypatch.delenv('PYTHONPATH', raising=False) or ''}")
    mod = "labkit.testing.numba_builds"
    requests = [(mod, f"split_kernel_{dt}_d{D}_g{G}", _sig(dt)) for D in (64, 128) for dt in ("float16", "float32")
                for G in (1, 4)]
    requests += [("nb02_exercise_kernel", "fused_decode_kernel",
                  f"void({dt}[:, :, ::1], {dt}[:, :, :, ::1], {dt}[:, :, :, ::1], {dt}[:, :, ::1], float32)")
                 for dt in ("float16", "float32")]
    ptx = compile_numba_ptx_for_t4(requests)
    assert len(ptx) == len(requests)
    for key, text in ptx.items():
        if "split_kernel" in key:  # the running statistics and the tile's words stay in registers
            assert ".local" not in text, f"{key} spills to local memory"
            assert "ld.global.u64" in text, f"{key} does not load K and V as 8-byte words"


def test_plan_rounds_the_grid_to_whole_waves():
    # 4 resident blocks on each of 132 SMs: a wave is 528 blocks. Whole waves, or nearly.
    cfg = GPU_CONFIG
    for B, H, T in ((8, 32, 8192), (8, 32, 32768), (1, 32, 8192), (8, 12, 32768), (1, 12, 32768)):
        p = plan(B, H, H, T, cfg=cfg, sms=132, resident=4)
        n = p.grid[0] * p.grid[1]
        assert n / (-(-n // 528) * 528) >= 0.95, (B, H, T, p)


def test_plan_scores_the_cap_and_prefers_fewer_blocks_on_a_tie():
    # 32 heads at T = 4096 allow 16 splits of 2 tiles: 512 blocks, two waves of 2 × 132 (an
    # SM holds 3, the plan fills 2). 8 splits make one full wave and won on the H200.
    assert plan(1, 32, 32, 4096, cfg=SM90_CONFIG, sms=132, resident=3).splits == 8
    assert plan(8, 32, 32, 4096, cfg=SM90_CONFIG, sms=132, resident=3).splits == 1  # 256 blocks: one wave
    p = plan(1, 12, 12, 8192, cfg=SM90_CONFIG, sms=132, resident=3)
    assert p.grid[0] * p.grid[1] == 2 * 132 and p.resident == 3


def test_launch_plan_is_what_numba_decode_launches():
    q, k, v = inputs(2, 4, 2, 45, 64, torch.float32)
    assert launch_plan(q, k, v) == plan(2, 4, 2, 45)  # sim mode: no compiled kernel to ask
    assert launch_plan(q, k, v, splits=5).splits == 3  # chunks of whole tiles (8 in sim)
    with pytest.raises(ValueError, match="head dim"):
        launch_plan(q[..., :32].contiguous(), k[..., :32].contiguous(), v[..., :32].contiguous())


def test_workspace_is_cached_and_counters_stay_zero():
    q, k, v = inputs(1, 4, 2, 40, 64, torch.float32)
    numba_decode(q, k, v, splits=3)
    p = plan(1, 4, 2, 40, splits=3)  # the launch numba_decode made: its workspace's key
    assert (p.splits, p.grid[0]) == (3, 2)
    ws, counters = workspace(q.device, 1, 4, p.splits, 64, p.grid[0])
    assert ws.numel() == 1 * 4 * 3 * (64 + 2) and torch.equal(counters, torch.zeros(2, dtype=torch.int32))
    assert workspace(q.device, 1, 4, p.splits, 64, p.grid[0])[0] is ws  # no allocation on the next call
    numba_decode(q, k, v, splits=3)
    assert torch.equal(counters, torch.zeros(2, dtype=torch.int32))  # the last block of each group reset it


def test_fp16_words_unpack_exactly_including_subnormals_and_signs():
    # Every finite fp16 bit pattern through the kernel's word unpacking (the simulator runs it as Python).
    from labkit.attention import numba_words as nk

    bits = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16)
    halves = bits.view(torch.float16)
    finite = torch.isfinite(halves)
    f = np.zeros(4, dtype=np.float32)
    got = np.empty(1 << 16, dtype=np.float32)
    for i, w in enumerate(halves.view(torch.int64).numpy()):
        nk._unpack_half.fn(w, f)  # the Python function the simulator runs
        got[4 * i: 4 * i + 4] = f
    want = halves.double().numpy() / nk.HALF_SCALE
    assert np.array_equal(got[finite.numpy()].astype(np.float64), want[finite.numpy()])


def test_low_occupancy_warning_is_silenced_even_when_coloured():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        import importlib

        importlib.reload(numba_bridge)  # installs its filter into the fresh filter list
        warnings.warn("\x1b[1mGrid size 32 will likely result in GPU under-utilization due to low occupancy.\x1b[0m")
        warnings.warn("Grid size 8 will likely result in GPU under-utilization due to low occupancy.")
    assert not caught
