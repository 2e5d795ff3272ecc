"""The master solutions of notebooks 02 and 03's kernel exercises, timed beside labkit's and SDPA.

    PYTHONPATH=. python scripts/gpu/student_kernels.py --out DIR [--contexts 512,2048,8192,32768]

Pulls each exercise's solution cell out of ``solutions/`` (``labkit.course.solutions``), so what is
timed is exactly what a student who solved the exercise runs, and times it as the notebooks' timing
cells do (``labkit.bench.student.bench_callables``: checked against float64, then CUDA-graph time
over KV buffers rotated past the L2), batch 1, fp16:

* ``02.fused_kernel`` (one block per head, 128 threads) beside ``numba`` and ``sdpa``, Llama 32/32/128;
* ``03.one_pass`` (64-token tiles) beside ``triton`` and ``sdpa``, Llama 32/32/128;
* ``03.gqa_split`` (your split plan + GQA split kernel + merge, 16-token tiles, 2 warps) beside
  ``triton_splitk`` and ``sdpa``, Llama-3-8B 32/8/128.

Writes ``student_kernels_<gpu>.json``, which the notebooks' timing cells show in sim mode.
In sim mode it runs on tiny sizes as a smoke test (nothing is timed, nothing written).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import labkit  # noqa: F401  (decides the mode before numba and triton are imported)
import torch

from labkit import runtime
from labkit.attention import get_impl
from labkit.bench import copy_roofline_gbps, run_meta, save_records
from labkit.bench.student import bench_callables, print_records
from labkit.course.solutions import write_exercise_module

PRE_NUMBA = "import math\nimport labkit\nfrom numba import cuda, float32\nfrom labkit.attention.numba_exercises import launch_one_pass\n"
PRE_TRITON = "import math\nimport torch\nimport triton\nimport triton.language as tl\n"


def _module(tmp: Path, notebook: str, exercises: list[str], preamble: str, name: str):
    path = tmp / f"{name}.py"
    source = preamble
    for ex in exercises:
        part = tmp / f"_{ex.replace('.', '_')}.py"
        write_exercise_module(notebook, ex, part)
        source += "\n" + part.read_text()
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)  # triton.jit needs a real file to read the source from
    return mod


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--contexts", default="512,2048,8192,32768")
    args = ap.parse_args(argv)
    gpu = runtime.MODE == "gpu"
    contexts = [int(t) for t in args.contexts.split(",")] if gpu else [19]
    roofline = copy_roofline_gbps()
    print(f"copy roofline: {roofline:.0f} GB/s" if roofline else "sim mode: nothing is timed")
    tmp = Path(tempfile.mkdtemp())
    nb02 = _module(tmp, "02_numba_fused", ["02.fused_kernel"], PRE_NUMBA, "master_02")
    nb03 = _module(tmp, "03_triton_flash_decoding", ["03.one_pass", "03.split_plan", "03.gqa_split", "03.merge"],
                   PRE_TRITON, "master_03")
    from labkit.attention.triton_exercises import gqa_split_and_merge, launch_one_pass

    sms = torch.cuda.get_device_properties(0).multi_processor_count if gpu else 40

    def one_pass(q, k, v):
        return launch_one_pass(nb03.one_pass_kernel, q, k, v, torch.empty_like(q), block_t=64)

    def flash(q, k, v):
        splits = nb03.split_plan(q.shape[0], k.shape[1], k.shape[2], sms, block_t=16)
        return gqa_split_and_merge(nb03.gqa_split_kernel, nb03.merge_kernel, q, k, v, splits, block_t=16, num_warps=2)

    cases = [
        ("02.fused_kernel", nb02.fused_decode, "numba", (32, 32, 128) if gpu else (2, 2, 64)),
        ("03.one_pass", one_pass, "triton", (32, 32, 128) if gpu else (2, 2, 64)),
        ("03.gqa_split", flash, "triton_splitk", (32, 8, 128) if gpu else (4, 1, 64)),
    ]
    records = []
    for exercise, fn, labkit_kernel, (Hq, Hkv, D) in cases:
        case = []
        for T in contexts:
            case += bench_callables({exercise: fn, labkit_kernel: get_impl(labkit_kernel), "sdpa": get_impl("sdpa")},
                                       B=1, Hq=Hq, Hkv=Hkv, T=T, D=D, dtype=torch.float16, roofline_gbps=roofline)
        print(f"\n{exercise} (Hq={Hq}, Hkv={Hkv}, D={D}, fp16, batch 1)")
        print_records(case)
        records += case
    if gpu:
        path = save_records(records, "student_kernels", run_meta(roofline), args.out)
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
