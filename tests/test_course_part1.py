"""Notebooks 00-03's exercises: each master solution passes its check, each released stub fails
as "not started", a wrong answer fails the property that names its mistake, and an answer that is,
or only calls, labkit's own implementation fails (so the grader scores it 0).

The solutions and stubs are read from ``solutions/`` and ``notebooks/`` (never copied here)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

import labkit  # noqa: F401  (decides the mode first)
from labkit.checks import CheckFailure
from labkit.course.solutions import exercise_source, write_exercise_module
from labkit.paths import ROOT

MASTERS, RELEASED = ROOT / "solutions", ROOT / "notebooks"
PRE_NUMBA = ("import math\nimport labkit\nimport torch\nfrom numba import cuda, float32\n"
             "from labkit.attention.numba_exercises import launch_one_pass\n")
PRE_TRITON = "import math\nimport torch\nimport triton\nimport triton.language as tl\n"


def _ns(notebook, exercise, *, released=False, preamble="import math\nimport torch\n"):
    ns = {"__name__": f"_t_{exercise.replace('.', '_')}"}
    exec(compile(preamble + exercise_source(notebook, exercise, masters=RELEASED if released else MASTERS),
                 f"<{exercise}>", "exec"), ns)
    return ns


def _module(tmp_path, notebook, exercise, *, released=False, preamble=PRE_TRITON):
    """Triton kernels need a real file (triton.jit reads the source)."""
    name = f"_t_{exercise.replace('.', '_')}_{'stub' if released else 'master'}"
    path = write_exercise_module(notebook, exercise, tmp_path / f"{name}.py", preamble=preamble,
                                 masters=RELEASED if released else MASTERS)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _fails(check, answer, match, **kw):
    with pytest.raises(CheckFailure, match=match):
        check(answer, **kw)


# ---------------------------------------------------------------------------------------- 00
def test_00_roofline_time():
    from labkit.bench import memory_wall
    from labkit.checks import nb00

    nb00.check_roofline_time(_ns("00_setup", "00.roofline_time")["roofline_time_us"])
    _fails(nb00.check_roofline_time, _ns("00_setup", "00.roofline_time", released=True)["roofline_time_us"], "not started")
    calls = lambda batch, layers, kv_heads, head_dim, context, itemsize, gbps: memory_wall.roofline_time_us(  # noqa: E731
        memory_wall.decode_kv_bytes(batch, layers, kv_heads, head_dim, context, itemsize), gbps)
    _fails(nb00.check_roofline_time, calls, "calls labkit's labkit.bench.memory_wall")
    only_k = lambda batch, layers, kv_heads, head_dim, context, itemsize, gbps: (  # noqa: E731
        batch * layers * kv_heads * context * head_dim * itemsize / (gbps * 1e3))
    _fails(nb00.check_roofline_time, only_k, "reads both K and V")


def test_00_fix_timing():
    from labkit.bench.simgpu import reference_time_us
    from labkit.checks import nb00

    nb00.check_timing(_ns("00_setup", "00.fix_timing")["time_kernel_us"])
    stub = _ns("00_setup", "00.fix_timing", released=True)
    assert "broken_time_kernel_us" in stub  # the released stub gives the broken function to repair
    _fails(nb00.check_timing, stub["time_kernel_us"], "not started")
    _fails(nb00.check_timing, stub["broken_time_kernel_us"], "waits for the device")
    _fails(nb00.check_timing, reference_time_us, "labkit's own")
    _fails(nb00.check_timing, lambda gpu, kernel, buffers: reference_time_us(gpu, kernel, buffers), "calls labkit's")


def test_memory_wall_counts_weights_and_kv():
    from labkit.bench import memory_wall as mw

    llama = mw.MODELS["llama-7b"]
    short = mw.decode_step_bytes(llama, batch=1, context=512)
    assert short["weights"] == int(6.74e9 * 2) and short["kv_share"] < 0.05  # weights dominate at batch 1
    assert mw.decode_step_bytes(llama, batch=64, context=4096)["kv_share"] > 0.9  # KV dominates
    T = mw.kv_equals_weights_context(llama)
    b = mw.decode_step_bytes(llama, batch=1, context=round(T))
    assert abs(b["kv"] - b["weights"]) / b["weights"] < 1e-3


# ---------------------------------------------------------------------------------------- 01
def test_01_naive_decode():
    from labkit.attention import naive
    from labkit.attention.reference import reference_decode
    from labkit.checks import nb01

    nb01.check_naive_decode(_ns("01_naive_attention", "01.naive_decode")["naive_decode"])
    _fails(nb01.check_naive_decode, _ns("01_naive_attention", "01.naive_decode", released=True)["naive_decode"],
           "not started")
    _fails(nb01.check_naive_decode, naive.naive_decode, "labkit's own")
    converted = lambda q, k, v, scale=None: reference_decode(q, k, v, scale=scale).to(q.dtype)  # noqa: E731
    _fails(nb01.check_naive_decode, converted, "calls labkit's labkit.attention.reference:reference_decode")
    no_max = lambda q, k, v, scale=None: torch.exp(  # noqa: E731  (softmax without the max: overflows)
        (q[:, :, None, :].float() * k.float()).sum(-1) * (scale or q.shape[-1] ** -0.5))
    _fails(nb01.check_naive_decode, no_max, "matches the float64 reference")


def test_01_pass_bytes_properties_are_independent(capsys):
    from labkit.attention import naive
    from labkit.checks import nb01

    master = _ns("01_naive_attention", "01.pass_bytes")["pass_bytes"]
    nb01.check_pass_bytes(master)
    _fails(nb01.check_pass_bytes, _ns("01_naive_attention", "01.pass_bytes", released=True)["pass_bytes"], "not started")
    _fails(nb01.check_pass_bytes, naive.pass_bytes, "labkit's own")

    def wrong_output(B, Hq, Hkv, T, D, itemsize):  # forgets to count V
        out = master(B, Hq, Hkv, T, D, itemsize)
        out["output"] -= B * Hkv * T * D * itemsize
        return out

    capsys.readouterr()
    with pytest.raises(CheckFailure):
        nb01.check_pass_bytes(wrong_output)
    lines = capsys.readouterr().out
    assert "✓ scores pass" in lines and "✓ softmax pass" in lines and "✗ output pass" in lines


# ---------------------------------------------------------------------------------------- 02
def test_02_block_reduce():
    from labkit.checks import nb02

    master = _ns("02_numba_fused", "02.block_reduce", preamble=PRE_NUMBA)
    nb02.check_block_reduce(master["block_reduce_kernel"], threads=master["THREADS"])
    stub = _ns("02_numba_fused", "02.block_reduce", released=True, preamble=PRE_NUMBA)
    _fails(nb02.check_block_reduce, stub["block_reduce_kernel"], "not started", threads=stub["THREADS"])
    # No tree: thread 0 writes its own elements' max and sum only.
    src = exercise_source("02_numba_fused", "02.block_reduce", masters=MASTERS)
    src = src.replace("stride = THREADS // 2", "stride = 0")
    ns = {}
    exec(compile(PRE_NUMBA + src, "<no tree>", "exec"), ns)
    _fails(nb02.check_block_reduce, ns["block_reduce_kernel"], "N = threads", threads=ns["THREADS"])


def test_02_online_update_and_fused_reject_labkit():
    from labkit.attention.numba_fused import numba_decode
    from labkit.attention.online_softmax import online_update
    from labkit.checks import nb02

    nb02.check_online_update(_ns("02_numba_fused", "02.online_update")["online_update"])
    _fails(nb02.check_online_update, online_update, "labkit's own")
    _fails(nb02.check_online_update, lambda *a: online_update(*a), "calls labkit's")
    _fails(nb02.check_fused_kernel, numba_decode, "labkit's own", block=8)


# ---------------------------------------------------------------------------------------- 03
NB03 = "03_triton_flash_decoding"


def test_03_tile_copy(tmp_path):
    from labkit.checks import nb03

    nb03.check_tile_copy(_module(tmp_path, NB03, "03.tile_copy").tile_copy_kernel)
    _fails(nb03.check_tile_copy, _module(tmp_path, NB03, "03.tile_copy", released=True).tile_copy_kernel, "not started")
    src = exercise_source(NB03, "03.tile_copy", masters=MASTERS).replace(
        "mask = (rows[:, None] < M) & (cols[None, :] < N)", "mask = rows[:, None] < M")  # columns unmasked
    path = tmp_path / "_t_unmasked_cols.py"
    path.write_text(PRE_TRITON + src)
    spec = importlib.util.spec_from_file_location("_t_unmasked_cols", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _fails(nb03.check_tile_copy, mod.tile_copy_kernel, "masked columns")


def test_03_gqa_split(tmp_path):
    from labkit.attention.triton_decode import _attend_kernel
    from labkit.checks import nb03

    nb03.check_gqa_split(_module(tmp_path, NB03, "03.gqa_split").gqa_split_kernel)
    _fails(nb03.check_gqa_split, _module(tmp_path, NB03, "03.gqa_split", released=True).gqa_split_kernel, "not started")
    _fails(nb03.check_gqa_split, _attend_kernel, "labkit's own")


def test_03_split_plan():
    from labkit.attention.splits import num_splits_heuristic
    from labkit.checks import nb03

    pre = "import math\nfrom labkit.attention.splits import sm_utilisation\n"
    nb03.check_split_plan(_ns(NB03, "03.split_plan", preamble=pre)["split_plan"])
    _fails(nb03.check_split_plan, _ns(NB03, "03.split_plan", released=True, preamble=pre)["split_plan"], "not started")
    _fails(nb03.check_split_plan, num_splits_heuristic, "labkit's own")
    _fails(nb03.check_split_plan, lambda b, h, T, sms, **kw: num_splits_heuristic(b, h, T, sms), "calls labkit's")
    _fails(nb03.check_split_plan, lambda b, h, T, sms, **kw: max(1, -(-4 * sms // (b * h))), "never more splits than tiles")


def test_03_one_pass_and_merge_reject_labkit():
    from labkit.attention.triton_decode import _attend_kernel
    from labkit.attention.triton_merge import _merge_kernel
    from labkit.checks import nb03

    _fails(nb03.check_one_pass, _attend_kernel, "labkit's own")
    _fails(nb03.check_merge, _merge_kernel, "labkit's own")


def test_hints_exist_for_every_exercise_of_part1():
    import json

    from labkit.course.hints import hint_count, hint_text

    for nb in ("00_setup", "01_naive_attention", "02_numba_fused", NB03):
        cells = json.loads((MASTERS / f"{nb}.ipynb").read_text())["cells"]
        for cell in cells:
            ex = cell.get("metadata", {}).get("labkit", {}).get("exercise")
            if ex:
                assert 2 <= hint_count(ex) <= 3, ex
    assert hint_text("01.plot_question", "answer") and hint_text("02.plot_question", "answer")


# ---------------------------------------------------------------------------------------- the T4
def test_new_kernels_compile_for_the_t4(tmp_path, monkeypatch):
    """The warm-ups' and the GQA split kernel's master solutions compile for sm_75 within 64 KB."""
    from labkit.testing import compile_numba_ptx_for_t4, compile_triton_many_for_t4

    tile = _module(tmp_path, NB03, "03.tile_copy").tile_copy_kernel
    gqa = _module(tmp_path, NB03, "03.gqa_split").gqa_split_kernel
    requests = [(tile, {"X": "*fp32", "Y": "*fp32", "P": "*i32", "M": "i32", "N": "i32", "stride_x": "i32",
                        "stride_y": "i32"}, dict(BLOCK_M=32, BLOCK_N=32), 4)]
    for dt in ("fp16", "fp32"):
        requests.append((gqa, {"Q": f"*{dt}", "K": f"*{dt}", "V": f"*{dt}", "M": "*fp32", "L": "*fp32", "Acc": "*fp32",
                               "scale": "fp32", "T": "i32", "chunk": "i32", "num_splits": "i32"},
                         dict(GROUP=4, GROUP_P=4, HEAD_DIM=128, BLOCK_T=16), 2))
    for build in compile_triton_many_for_t4(requests):
        assert build.cubin_bytes > 0

    write_exercise_module("02_numba_fused", "02.block_reduce", tmp_path / "nb02_block_reduce.py", preamble=PRE_NUMBA)
    path = tmp_path / "nb02_block_reduce.py"
    path.write_text(path.read_text().replace("labkit.is_sim()", "False"))  # the GPU's 128 threads
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{monkeypatch.delenv('PYTHONPATH', raising=False) or ''}")
    ptx = compile_numba_ptx_for_t4([("nb02_block_reduce", "block_reduce_kernel",
                                     "void(float32[:, ::1], float32[::1], float32[::1], int32[:, ::1])")])
    assert len(ptx) == 1


def test_a_failed_check_shows_its_message_not_labkits_frames(capfd):
    """In a notebook a failed check prints the failed properties and why, not 20 lines of labkit's
    frames (IPython renders ``CheckFailure`` through its ``_render_traceback_``)."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_cell("from labkit.checks import nb01\nnb01.check_naive_decode(lambda q, k, v, scale=None: q * 0)")
    out = capfd.readouterr()
    text = out.out + out.err
    assert "01.naive_decode: 7 of 8 properties failed" in text and "[the scale argument]" in text
    assert "run_check(" not in text and "core.py" not in text and "Traceback" not in text
