"""``labkit doctor``: is this machine ready for the course? Every problem comes with its fix.

It prints the GPU (name, compute capability, memory, SM count), the versions that matter,
the mode and why, then runs one tiny Numba kernel and one tiny Triton kernel and checks
their results. Known failures (no GPU, a Numba PTX/driver mismatch, numpy 2.5 with
numba-cuda, bf16 on a T4, ipywidgets 8 on Colab) are recognised and answered with a fix.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field

from labkit import runtime
from labkit.bench.records import device_info, versions


@dataclass
class Finding:
    ok: bool
    what: str
    fix: str = ""


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    def add(self, ok: bool, what: str, fix: str = "") -> None:
        self.findings.append(Finding(ok, what, fix))
        mark = "✓" if ok else "✗"
        print(f"  {mark} {what}")
        if fix and not ok:
            print(f"      fix: {fix}")


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

    from labkit.testing.doctor_kernels import scale_kernel

    x = torch.randn(37, device=runtime.device())
    out = torch.full_like(x, float("nan"))
    scale_kernel[(triton.cdiv(37, 16),)](x, out, 37, BLOCK=16)
    if not torch.allclose(out, 3 * x):
        raise AssertionError("tiny Triton kernel returned a wrong result")


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

    for name, run, fix in (("Numba", _tiny_numba, _numba_fix),
                           ("Triton", _tiny_triton, lambda e: "pip install -U triton matching your torch "
                            "(on Colab keep the preinstalled one and restart the runtime)")):
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - report any failure with its fix
            tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
            report.add(False, f"tiny {name} kernel failed: {tb}", fix(exc))
        else:
            report.add(True, f"tiny {name} kernel ran and its result is right ({runtime.MODE} mode)")
    print("doctor: all good" if report.ok else "doctor: problems found (fixes above)")
    return report
