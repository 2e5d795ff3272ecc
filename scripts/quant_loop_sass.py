"""The quantized kernel's main loop in SASS, for sm_90, on a machine with no GPU.

Compiles ``_quant_attend_kernel`` (int8, one head per KV head, D = 128, split, no lengths: what
``labkit.bench.quant`` launches at batch 1) with the Triton on this machine, disassembles the cubin
with the ``cuobjdump`` Triton ships, finds the longest backward branch (the tile loop) and counts
its instructions by opcode. Prints one line per tile / warps / stages setting (a fourth field
``n``: the loop with the heads on the MMA's N side, ``quant_flash_decode(..., heads_on_n=True)``):

    python scripts/quant_loop_sass.py [--config 128,4,3 32,1,3 32,1,3,n ...]

Warp-instructions per 128 tokens (loop instructions × warps × 128 / tile) compare settings by
the work they issue for the same bytes.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

# compile for a GPU, not the interpreter, and keep numba's CUDA target real (labkit's PTX-only mode)
os.environ.update(LABKIT_MODE="sim", LABKIT_PTX_ONLY="1", TRITON_INTERPRET="0", NUMBA_ENABLE_CUDASIM="0")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import triton  # noqa: E402

from labkit.testing.attend_builds import quant_build  # noqa: E402
from labkit.testing.t4 import _ptxas_resources, compiled_triton  # noqa: E402


def sass(block_t: int, num_warps: int, num_stages: int, heads_on_n: bool = False):
    """``(address, instruction)`` of the sm_90 build of one setting, and the build."""
    kernel, sig, meta, _ = quant_build("i8", 128, 1, True, 8192, (9, 0), hkv=32, has_lengths=False, block_t=block_t,
                                       num_warps=num_warps, num_stages=num_stages, heads_on_n=heads_on_n)
    build = compiled_triton(kernel, sig, meta, num_warps, num_stages, cc=(9, 0))
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(build.asm["cubin"])
        text = subprocess.run([cuobjdump, "-sass", path], capture_output=True, text=True, check=True).stdout
    found = re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", text)
    return [(int(a, 16), ins.strip()) for a, ins in found], build


def tile_loop(code: list[tuple[int, str]]) -> list[str]:
    """The instructions of the longest loop: from a backward branch's target to the branch."""
    addrs = [a for a, _ in code]
    loops = []
    for i, (addr, ins) in enumerate(code):
        m = re.search(r"BRA\s+0x([0-9a-f]+)", ins)
        if m and int(m.group(1), 16) < addr and int(m.group(1), 16) in addrs:
            start = addrs.index(int(m.group(1), 16))
            loops.append((i - start + 1, start, i))
    _, start, end = max(loops)
    return [ins for _, ins in code[start:end + 1]]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", nargs="+", default=["128,4,3", "32,1,3", "32,1,3,n"], help="tile,warps,stages[,n]")
    args = p.parse_args()
    print(f"Triton {triton.__version__}, sm_90, int8, D = 128, one head per KV head")
    for setting in args.config:
        fields = setting.split(",")
        block_t, warps, stages = (int(x) for x in fields[:3])
        heads_on_n = fields[3:] == ["n"]
        code, build = sass(block_t, warps, stages, heads_on_n)
        loop = tile_loop(code)
        ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", ins).split()[0].split(".")[0] for ins in loop)
        print(f"{block_t}-token tiles, {warps} warps, {stages} stages{', heads on N' if heads_on_n else ''}: "
              f"{len(loop)} instructions per thread per tile, {len(loop) * warps * 128 // block_t} warp-instructions "
              f"per 128 tokens; {_ptxas_resources(build.asm['ptx'], (9, 0))[0]} registers, "
              f"{build.metadata.shared} bytes of shared memory")
        print("   " + ", ".join(f"{op} {n}" for op, n in ops.most_common(20)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
