"""Compile kernels for the course's target GPU, the T4 (compute capability 7.5), with no GPU.

* Triton: ``triton.compile`` for ``GPUTarget("cuda", 75, 32)`` runs Triton's whole pipeline
  down to an sm_75 cubin on the CPU; we then assert the kernel's shared memory fits 64 KB.
  In sim mode this happens in a child process, away from Triton's interpreter.
* Numba: ``numba.cuda.compile_ptx(..., cc=(7, 5))`` needs the real ``numba.cuda`` (not the
  simulator) and the CUDA 12 NVVM from ``numba-cuda[cu12]``. A process in sim mode has the
  simulator loaded, so the PTX is produced in a child process started with
  ``LABKIT_PTX_ONLY=1``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass

T4_CC = (7, 5)
T4_SHARED_BYTES = 64 * 1024  # the most one block may use on a T4


@dataclass
class TritonBuild:
    name: str
    shared_bytes: int
    num_warps: int
    registers: int | None
    cubin_bytes: int
    spill_bytes: int | None = None  # ptxas -v's spill stores (None where ptxas could not be run)
    byte_shared_loads: int = 0  # 8-bit loads from shared memory in the PTX (a tile gathered byte by byte)


def compile_triton_for_t4(kernel, signature: dict, constexprs: dict | None = None, *, num_warps: int = 4,
                          num_stages: int = 2) -> TritonBuild:
    """Compile a ``@triton.jit`` kernel for sm_75 and assert it fits the T4's shared memory.

    ``signature`` maps each runtime argument to a Triton type string (``"*fp16"``, ``"i32"``,
    ``"fp32"``), or a tuple argument to a tuple of them (``("i32", "i32")``, nested as the
    argument is); ``constexprs`` maps each ``tl.constexpr`` argument to its value.
    Under ``TRITON_INTERPRET=1`` (sim mode) Triton's own library functions (``tl.sum``,
    ``tl.max``, ``tl.cdiv``) are interpreter objects the compiler can't use, so the kernel is
    compiled in a child process with the real compiler: it must be defined at module level.
    """
    return compile_triton_many_for_t4([(kernel, signature, constexprs, num_warps)], num_stages=num_stages)[0]


def compile_triton_many_for_t4(requests, *, num_stages: int = 2, ccs=None) -> list[TritonBuild]:
    """Compile several kernels for sm_75 (one child process in sim mode); see :func:`compile_triton_for_t4`.

    ``requests``: a list of ``(kernel, signature, constexprs, num_warps)``. ``ccs``: one compute
    capability per request instead of the T4's, for the code paths only newer GPUs take (the
    64 KB shared-memory assertion is the T4's and applies to sm_75 builds only).
    """
    ccs = [tuple(cc) for cc in ccs] if ccs is not None else [T4_CC] * len(requests)
    if os.environ.get("TRITON_INTERPRET") == "1":
        builds = _compile_triton_in_child(requests, num_stages, ccs)
    else:
        builds = [_compile_triton(k, sig, c, w, num_stages, cc) for (k, sig, c, w), cc in zip(requests, ccs)]
    for build, cc in zip(builds, ccs):
        if cc != T4_CC:
            continue
        assert build.shared_bytes <= T4_SHARED_BYTES, (
            f"{build.name} needs {build.shared_bytes} bytes of shared memory; a T4 block has {T4_SHARED_BYTES}"
        )
    return builds


def compiled_triton(kernel, signature: dict, constexprs: dict | None, num_warps: int, num_stages: int,
                    cc=T4_CC):
    """Triton's compiled kernel (``.asm["ptx"]``, ``.asm["cubin"]``, ``.metadata``) for compute
    capability ``cc``, its pointers marked aligned as a launch marks them. Needs Triton's real
    compiler: outside sim mode, or in a process started as :func:`compile_triton_many_for_t4`'s child."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    fn = kernel if isinstance(kernel, JITFunction) else JITFunction(getattr(kernel, "fn", kernel))
    signature = {name: _as_tuples(ty) for name, ty in signature.items()}
    src = ASTSource(fn=fn, signature=signature, constexprs=dict(constexprs or {}),
                    attrs=aligned_pointers(fn.arg_names, signature))
    return triton.compile(src, target=GPUTarget("cuda", cc[0] * 10 + cc[1], 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def _compile_triton(kernel, signature: dict, constexprs: dict | None, num_warps: int, num_stages: int,
                    cc=T4_CC) -> TritonBuild:
    compiled = compiled_triton(kernel, signature, constexprs, num_warps, num_stages, cc)
    fn = getattr(kernel, "fn", kernel)
    md = compiled.metadata
    registers, spills = _ptxas_resources(compiled.asm["ptx"], cc)
    byte_loads = len(re.findall(r"ld\.shared(?:\.v\d)?\.[bus]8\b", compiled.asm["ptx"]))
    return TritonBuild(fn.__name__, int(md.shared), int(md.num_warps), registers, len(compiled.asm["cubin"]), spills,
                       byte_loads)


def aligned_pointers(arg_names, signature: dict) -> dict:
    """Triton's attributes marking every pointer of ``signature`` 16-byte aligned, keyed by path.

    A launch marks every pointer so (torch's allocations are), and only then may Triton
    vectorise the loads and pipeline them (cp.async): we compile as a launch does. Argument i
    has path ``(i,)``; element j of a tuple argument i has ``(i, j)``.
    """
    return {path: [["tt.divisibility", 16]]
            for name, ty in signature.items() for path, leaf in _leaves(_as_tuples(ty), (arg_names.index(name),))
            if leaf.startswith("*")}


def _as_tuples(ty):
    """A signature entry with every list made a tuple: JSON (the child process) turns tuples into lists."""
    return tuple(_as_tuples(t) for t in ty) if isinstance(ty, (list, tuple)) else ty


def _leaves(ty, path: tuple):
    """``(path, type)`` of every scalar or pointer in a signature entry; a tuple argument's
    element j of argument i has path ``(i, j)``, as Triton keys its attributes."""
    if isinstance(ty, tuple):
        for j, t in enumerate(ty):
            yield from _leaves(t, path + (j,))
    else:
        yield path, ty


def _ptxas_resources(ptx: str, cc) -> tuple[int | None, int | None]:
    """``(registers, spill store bytes)`` from the ptxas that ships with Triton, run with ``-v``
    (Triton reports registers only once a GPU has loaded the kernel)."""
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    capability = 10 * cc[0] + cc[1]
    try:
        ptxas = get_ptxas(capability).path  # the ptxas Triton itself runs (honours TRITON_PTXAS_PATH)
    except Exception:  # noqa: BLE001 - no usable ptxas: registers unknown, as on a machine without one
        return None, None
    arch = sm_arch_from_capability(capability)  # sm_90a on Hopper, as Triton compiles it
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        proc = subprocess.run([ptxas, f"-arch={arch}", "-v", path, "-o", os.path.join(tmp, "kernel.cubin")],
                              capture_output=True, text=True)
    regs = re.search(r"Used (\d+) registers", proc.stderr)
    spills = re.search(r"(\d+) bytes spill stores", proc.stderr)
    return (int(regs.group(1)) if regs else None), (int(spills.group(1)) if spills else None)


_TRITON_CHILD = r"""
import importlib, importlib.util, json, sys
from dataclasses import asdict
import labkit  # sim mode with LABKIT_PTX_ONLY=1: Triton's real compiler, not its interpreter
from labkit.testing.t4 import _compile_triton
req, num_stages, ccs = json.loads(sys.argv[1])
modules, out = {}, []
for (module, path, attr, signature, constexprs, num_warps), cc in zip(req, ccs):
    if (module, path) not in modules:
        try:
            if module == "__main__":
                raise ImportError(module)
            modules[module, path] = importlib.import_module(module)
        except ImportError:
            spec = importlib.util.spec_from_file_location("labkit_t4_child_module", path)
            modules[module, path] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(modules[module, path])
    kernel = getattr(modules[module, path], attr)
    out.append(asdict(_compile_triton(kernel, signature, constexprs, num_warps, num_stages, tuple(cc))))
print(json.dumps(out))
"""


def _compile_triton_in_child(requests, num_stages: int, ccs) -> list[TritonBuild]:
    import inspect

    req = []
    for kernel, signature, constexprs, num_warps in requests:
        fn = getattr(kernel, "fn", kernel)
        req.append((fn.__module__, inspect.getsourcefile(fn), fn.__name__, signature, dict(constexprs or {}), num_warps))
    env = dict(os.environ, LABKIT_MODE="sim", LABKIT_PTX_ONLY="1", TRITON_INTERPRET="0", NUMBA_ENABLE_CUDASIM="0")
    proc = subprocess.run([sys.executable, "-c", _TRITON_CHILD, json.dumps([req, num_stages, ccs])], env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"Triton compilation for sm_75 failed:\n{proc.stderr[-4000:]}")
    return [TritonBuild(**b) for b in json.loads(proc.stdout.strip().splitlines()[-1])]


_CHILD = r"""
import importlib, json, sys
import labkit  # sets mode; LABKIT_PTX_ONLY keeps numba.cuda real
from numba import cuda
req = json.loads(sys.argv[1])
out = {}
for module, attr, sig in req:
    k = getattr(importlib.import_module(module), attr)
    ptx, _ = cuda.compile_ptx(k.py_func, sig, cc=(7, 5))
    out[f"{module}.{attr}:{sig}"] = ptx
print(json.dumps(out))
"""


def compile_numba_ptx_for_t4(kernels: list[tuple[str, str, str]]) -> dict[str, str]:
    """Compile Numba kernels to PTX for compute capability 7.5.

    ``kernels`` is a list of ``(module, attribute, signature)``, e.g.
    ``("labkit.attention.numba_fused", "fused_decode_kernel", "void(float32[:, :, ::1], ...)")``.
    Returns ``{"module.attr:signature": ptx}``. Raises ``RuntimeError`` with the child's
    error output when a kernel fails to compile; asserts static shared memory fits the T4.
    """
    env = dict(os.environ, LABKIT_MODE="sim", LABKIT_PTX_ONLY="1", NUMBA_ENABLE_CUDASIM="0")
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(kernels)], env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"PTX compilation for cc 7.5 failed:\n{proc.stderr[-4000:]}")
    ptxs = json.loads(proc.stdout.strip().splitlines()[-1])
    for key, ptx in ptxs.items():
        assert ".target sm_75" in ptx, f"{key}: PTX is not for sm_75"
        shared = sum(int(n) for n in re.findall(r"\.shared\s+\.align\s+\d+\s+\.b8\s+\S+\[(\d+)\]", ptx))
        assert shared <= T4_SHARED_BYTES, f"{key}: {shared} bytes of static shared memory > {T4_SHARED_BYTES}"
    return ptxs
