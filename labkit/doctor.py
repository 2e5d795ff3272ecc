"""``labkit doctor``: is this machine ready for the course? Every problem comes with its fix.

It prints the GPU (name, compute capability, memory, SM count), the mode and why, and the
versions that matter, each against the range the course is tested on (:mod:`labkit.support`:
Colab's versions to the newest releases) with what to do when one is outside it. Then it runs
one tiny Numba and one tiny Triton kernel, and one small instance of each kernel family the
notebooks use (Numba fused decode, Triton split-K, the RoPE write, the paged kernel), each
checked against the float64 reference. Known failures (no GPU, a Numba PTX/driver mismatch,
numpy 2.5 with numba-cuda, bf16 on a T4, ipywidgets 8 on Colab, no Triton on macOS or
Windows) are recognised and answered with a fix. It exits non-zero when anything failed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import traceback
from dataclasses import dataclass, field

from labkit import runtime, support
from labkit.bench.records import device_info, versions

# The notebooks that need Triton (it installs on Linux only); the rest run anywhere.
TRITON_NOTEBOOKS = "03, 04, 05 and 07's paged-cache serving"
NO_TRITON_NOTEBOOKS = "00, 01, 02, 06 and the rest of 07"


@dataclass
class Finding:
    ok: bool
    what: str
    fix: str = ""
    warning: bool = False  # ok, but outside what is tested: the fix says what to do if something fails


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.warning]

    def add(self, ok: bool, what: str, fix: str = "", *, warning: bool = False) -> None:
        self.findings.append(Finding(ok, what, fix, warning))
        mark = "!" if warning and ok else ("✓" if ok else "✗")
        print(f"  {mark} {what}")
        if fix and (warning or not ok):
            print(f"      {'what to do' if warning and ok else 'fix'}: {fix}")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _installed(name: str) -> str | None:
    if name == "python":
        return platform.python_version()
    if name == "triton" and not _importable("triton"):
        return None
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_versions(report: Report, *, system: str | None = None) -> None:
    """One line for the versions inside the tested range, one per version outside it (with what to do)."""
    system = system or platform.system()
    inside = []
    for t in support.TESTED:
        got = _installed(t.name)
        state = support.status(t, got)
        if state == "ok":
            inside.append(f"{t.name} {got}")
        elif state == "missing" and t.linux_only and system != "Linux":
            report.add(True, f"{t.name} is not installed: it installs on Linux only ({system} here). Notebooks "
                       f"{TRITON_NOTEBOOKS} need it; {NO_TRITON_NOTEBOOKS} run here",
                       "run the Triton notebooks on Colab (each has an 'Open in Colab' link) or on a Linux machine",
                       warning=True)
        elif state == "missing" and system in t.not_on:
            report.add(True, f"{t.name} is not installed (it has no {system} build): Numba's own CUDA simulator "
                       "runs the Numba notebooks here")
        elif state == "missing":
            report.add(False, f"{t.name} is not installed", f"pip install '{t.name}>={t.oldest}'")
        else:
            report.add(True, f"{t.name} {got} is {state} than the versions the course is tested on "
                       f"({t.oldest} to {t.newest}.x)", support.advice(t, got, state, colab=runtime.IS_COLAB),
                       warning=True)
    if inside:
        report.add(True, "tested versions: " + ", ".join(inside))


def _tiny_numba() -> None:
    import numpy as np
    from numba import cuda

    from labkit.testing.doctor_kernels import axpy

    x = np.arange(37, dtype=np.float32)
    y = np.ones(37, dtype=np.float32)
    d_out = cuda.to_device(np.full(37, np.nan, dtype=np.float32))
    axpy[2, 32](d_out, cuda.to_device(x), cuda.to_device(y), np.float32(2.0))
    got = d_out.copy_to_host()
    if not np.allclose(got, 2 * x + y):
        raise AssertionError(f"tiny Numba kernel returned {got[:4]}…, expected {(2 * x + y)[:4]}…")


def _tiny_triton() -> None:
    import torch
    import triton

    from labkit.testing.doctor_kernels import scalar_mask_kernel, scale_kernel

    x = torch.randn(37, device=runtime.device())
    out = torch.full_like(x, float("nan"))
    scale_kernel[(triton.cdiv(37, 16),)](x, out, 37, BLOCK=16)
    if not torch.allclose(out, 3 * x):
        raise AssertionError("tiny Triton kernel returned a wrong result")
    out = torch.full_like(x, float("nan"))
    scalar_mask_kernel[(1,)](x, out, 37, 1, 2, BLOCK=64)  # a mask built from a scalar condition
    if not torch.allclose(out, 3 * x):
        raise AssertionError("tiny Triton kernel with a scalar condition in its mask returned a wrong result")


def _triton_fix(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "unsupported dtype" in text:
        return ("this Triton's interpreter refuses a mask labkit did not convert: import labkit before triton "
                "(restart the kernel), then report it with the versions above; meanwhile pip install 'triton<3.9'")
    t = next(t for t in support.TESTED if t.name == "triton")
    return (f"pip install 'triton>={t.oldest}' matching your torch (tested: {t.oldest} to {t.newest}.x; "
            "on Colab keep the preinstalled one and restart the runtime)")


def _numba_fix(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "row_stack" in text:
        return "numba-cuda 0.30 with numpy 2.5: import labkit before numba (it restores np.row_stack), or pip install 'numpy<2.5'"
    if "PTX" in text or "ptx" in text or "CUDA_ERROR_UNSUPPORTED_PTX_VERSION" in text or "NVVM" in text:
        return ("Numba's CUDA compiler is newer than the driver: pip install 'numba-cuda[cu12]' (the CUDA 12 "
                "compiler wheels; on Colab never reinstall torch), then restart the runtime")
    if "libnvvm" in text.lower() or "cudadrv" in text.lower():
        return "Numba can't find CUDA's NVVM: pip install 'numba-cuda[cu12]' and restart the runtime"
    return "reinstall numba-cuda: pip install -U 'numba-cuda[cu12]' (keep Colab's torch), then restart"


def _family(fn, tolerance: float = 1e-4):
    def run() -> None:
        err = fn()
        if not err <= tolerance:
            raise AssertionError(f"relative error {err:.1e} against the float64 reference (expected <= {tolerance:.0e})")
    return run


def doctor() -> Report:
    """Run every check, print a line each (with a fix where one fails) and return the report."""
    import numpy as np

    report = Report()
    print(runtime.summary())
    info = device_info()
    v = versions()
    if info["cc"]:
        print(f"GPU: {info['device']}, compute capability {info['cc']}, {info['memory_gb']} GB, "
              f"{info['sms']} SMs, L2 {info['l2_mb']} MB")
    print("versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val))

    if runtime.is_sim():
        report.add(True, "no GPU: kernels run on Numba's and Triton's CPU simulators (timings mean nothing)",
                   "on Colab: Runtime > Change runtime type > T4 GPU")
    else:
        report.add(True, f"GPU mode on {info['device']}")
        major, minor = (int(x) for x in info["cc"].split("."))
        if (major, minor) < (8, 0):
            print(f"  · bf16 needs compute capability 8.0; this GPU has {info['cc']}: "
                  "labkit's kernels use fp16 and fp32 here (bf16 inputs are refused with a clear error)")

    npv = tuple(int(p) for p in np.__version__.split(".")[:2])
    report.add(npv < (2, 5) or hasattr(np, "row_stack"),
               f"numpy {np.__version__}" + (" (np.row_stack restored for numba-cuda)" if npv >= (2, 5) else ""),
               "pip install 'numpy<2.5'")

    if runtime.IS_COLAB and v.get("ipywidgets", "").startswith("8"):
        report.add(False, f"ipywidgets {v['ipywidgets']} on Colab: its widget manager renders 7.x",
                   "pip install 'ipywidgets<8' (Colab ships 7.7), then Runtime > Restart")

    check_versions(report)
    has_triton = _installed("triton") is not None
    kernels = [("tiny Numba kernel", _tiny_numba, _numba_fix, False),
               ("tiny Triton kernel", _tiny_triton, _triton_fix, True)]
    from labkit.testing.doctor_kernels import FAMILIES

    kernels += [(f"{name} (notebook {nbs})", _family(fn), _triton_fix if triton else _numba_fix, triton)
                for name, nbs, fn, triton in FAMILIES]
    for what, run, fix, needs_triton in kernels:
        if needs_triton and not has_triton:
            print(f"  · {what}: skipped, no Triton here")
            continue
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - report any failure with its fix
            tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
            report.add(False, f"{what} failed: {tb}", fix(exc))
        else:
            report.add(True, f"{what} ran and its result is right ({runtime.MODE} mode)")
    if not report.ok:
        print("doctor: problems found (fixes above)")
    elif report.warnings:
        print("doctor: kernels run; see the warnings above (versions outside the tested range, or no Triton)")
    else:
        print("doctor: all good")
    return report
