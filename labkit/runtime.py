"""The run mode, decided once on ``import labkit``, before Numba or Triton are imported.

* ``gpu``: CUDA is available; kernels run on the GPU and timings mean something.
* ``sim``: no GPU (or ``LABKIT_MODE=sim``); ``NUMBA_ENABLE_CUDASIM=1`` and
  ``TRITON_INTERPRET=1`` are set so every Numba and Triton kernel still runs, on the CPU,
  on the small sizes of :data:`SIZES`.

Both simulators read their switch when they are imported (Numba) or when a kernel is
defined (Triton), which is why the decision has to come first and can't be changed later.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass

MODES = ("gpu", "sim")


class ModeError(RuntimeError):
    """The requested mode can't be honoured in this process."""


def _in_colab() -> bool:
    if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG"):
        return True
    return importlib.util.find_spec("google") is not None and importlib.util.find_spec("google.colab") is not None


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False
    return torch.cuda.is_available()


def _decide() -> tuple[str, str]:
    requested = os.environ.get("LABKIT_MODE", "").strip().lower()
    if requested:
        if requested not in MODES:
            raise ModeError(
                f"LABKIT_MODE={os.environ['LABKIT_MODE']!r} is not a mode: expected one of "
                f"{', '.join(MODES)} (or unset it to let labkit choose)."
            )
        if requested == "gpu" and not _cuda_available():
            raise ModeError(
                "LABKIT_MODE=gpu but torch sees no CUDA device. Use LABKIT_MODE=sim, or on "
                "Colab pick Runtime > Change runtime type > T4 GPU."
            )
        return requested, "LABKIT_MODE=" + requested
    if _cuda_available():
        return "gpu", "torch.cuda.is_available() is True"
    return "sim", "no CUDA device, so Numba's and Triton's CPU simulators run the kernels"


def _check_simulator_switches(mode: str) -> None:
    """Fail loudly if Numba or Triton were imported in a state that contradicts ``mode``."""
    want = "1" if mode == "sim" else "0"
    if "numba.cuda" in sys.modules:
        from numba import config

        if str(int(bool(config.ENABLE_CUDASIM))) != want and not _ptx_only():
            raise ModeError(
                f"numba.cuda was imported before labkit with NUMBA_ENABLE_CUDASIM="
                f"{int(bool(config.ENABLE_CUDASIM))}, but labkit runs in {mode} mode. Restart "
                f"the kernel (or the process) and `import labkit` before numba."
            )
    want = "0" if _ptx_only() else want
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") != want:
        # Triton reads TRITON_INTERPRET when a kernel is decorated; kernels already defined
        # keep the setting they were defined with.
        os.environ["TRITON_INTERPRET"] = want


def _ptx_only() -> bool:
    # Used by labkit.testing.t4: real numba.cuda (to emit PTX) and Triton's real compiler (not
    # its interpreter) on a machine with no GPU.
    return os.environ.get("LABKIT_PTX_ONLY") == "1"


def _set_switches(mode: str) -> None:
    # Triton has contracted a * b + c into one FMA unless a launch says otherwise; 3.9 warns on
    # every first compile that 3.10 turns that off. Every kernel here was measured with it on:
    # keep it on (a user's own setting wins), on every Triton, without the warning.
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    if mode == "sim":
        os.environ["TRITON_INTERPRET"] = "0" if _ptx_only() else "1"
        os.environ["NUMBA_ENABLE_CUDASIM"] = "0" if _ptx_only() else "1"
    else:
        os.environ["TRITON_INTERPRET"] = "0"
        os.environ["NUMBA_ENABLE_CUDASIM"] = "0"


def _restore_numpy_aliases() -> None:
    # numba-cuda 0.30 still calls np.row_stack, which numpy 2.5 removed.
    try:
        import numpy as np
    except ImportError:  # only labkit's tools that need no kernels run (`labkit release`)
        return

    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack


def _one_torch_thread() -> None:
    # The simulators run kernels as Python threads; torch's own CPU threads on top of them
    # slow tiny sim-mode models 10x or more on a 2-core machine.
    try:
        import torch
    except ImportError:  # only labkit's tools that need no kernels run (`labkit release`)
        return
    torch.set_num_threads(1)


def _fix_triton_interpreter() -> None:
    # Triton 3.6's interpreter turns a scalar into a Python int with int(array_of_one), which
    # numpy >= 2.4 refuses, so `for t in range(start, end, BLOCK)` with computed bounds fails in
    # sim mode. Convert through .item() instead (a no-op change on older numpy).
    try:
        from triton.runtime import interpreter
    except ImportError:  # pragma: no cover - triton is a hard dependency
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_labkit", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0].item()))

    patched._labkit = True
    interpreter._patch_lang_tensor = patched
    _fix_interpreter_masks(interpreter)


# The interpreter's methods that take a load/store mask (a keyword of the same name in every
# Triton from 3.4 to 3.9).
_MASKED_OPS = ("create_masked_load", "create_masked_store", "create_atomic_rmw", "create_atomic_load",
               "create_atomic_store")


def _fix_interpreter_masks(interpreter) -> None:
    # In Triton's interpreter a comparison keeps its operand's type (int32, int64) on its numpy
    # data's handle, so a *scalar* condition splatted over a tile becomes 0/1 integers:
    # `mask = (cols < n) & (row < num_rows)` with a scalar `row` holds int32, not bool. Triton
    # <= 3.6 read such a mask as true/false; Triton 3.9 refuses it ("mask has unsupported
    # dtype"). The compiled kernel is right either way (the mask is an i1 in the IR): convert
    # the mask to bool where the interpreter receives it. Kernels are unchanged, so is the GPU code.
    import inspect

    import numpy as np

    builder = getattr(interpreter, "InterpreterBuilder", None)
    handle_cls = getattr(interpreter, "TensorHandle", None)
    if builder is None or handle_cls is None:  # pragma: no cover - a future interpreter layout
        return
    for name in _MASKED_OPS:
        method = getattr(builder, name, None)
        if method is None or getattr(method, "_labkit", False):
            continue
        try:
            index = list(inspect.signature(method).parameters).index("mask")
        except ValueError:  # pragma: no cover - no mask argument in this version
            continue

        def patched(*args, _method=method, _index=index, **kwargs):
            mask = kwargs.get("mask") if "mask" in kwargs else (args[_index] if _index < len(args) else None)
            data = getattr(mask, "data", None)
            if isinstance(data, np.ndarray) and data.dtype != np.bool_:
                fixed = handle_cls(data != 0, mask.dtype)
                if "mask" in kwargs:
                    kwargs["mask"] = fixed
                else:
                    args = args[:_index] + (fixed,) + args[_index + 1:]
            return _method(*args, **kwargs)

        patched._labkit = True
        patched.__wrapped__ = method
        setattr(builder, name, patched)


@dataclass(frozen=True)
class Sizes:
    """Problem sizes per mode. Sim sizes are tiny: the simulators run a few thousand threads a second."""

    contexts: tuple[int, ...]  # context lengths swept by benchmarks and plots
    batches: tuple[int, ...]  # batch sizes swept
    heads: int  # query heads in demos
    head_dim: int  # head dimension in demos
    check_lengths: tuple[int, ...]  # KV lengths used by checks: 1, under a block, odd
    copy_bytes: int  # bytes per buffer for the copy roofline
    model_tokens: int  # tokens generated in model and decoding demos


GPU_SIZES = Sizes(
    contexts=(512, 2048, 4096, 8192, 32768),
    batches=(1, 8),
    heads=32,
    head_dim=128,
    check_lengths=(1, 7, 64, 333, 1000, 4099),
    copy_bytes=1 << 30,
    model_tokens=256,
)
SIM_SIZES = Sizes(
    contexts=(16, 48, 96),
    batches=(1, 2),
    heads=2,
    head_dim=16,
    check_lengths=(1, 5, 19),
    copy_bytes=1 << 20,
    model_tokens=12,
)

MODE, MODE_REASON = _decide()
_check_simulator_switches(MODE)
_set_switches(MODE)
_restore_numpy_aliases()
if MODE == "sim" and not _ptx_only():
    _fix_triton_interpreter()
if MODE == "sim" and "LABKIT_TORCH_THREADS" not in os.environ:
    _one_torch_thread()
IS_COLAB = _in_colab()
SIZES = GPU_SIZES if MODE == "gpu" else SIM_SIZES


def is_sim() -> bool:
    """True when kernels run on Numba's and Triton's CPU simulators."""
    return MODE == "sim"


def device():
    """The torch device labkit puts tensors on: ``cuda`` in gpu mode, ``cpu`` in sim mode."""
    import torch

    return torch.device("cuda" if MODE == "gpu" else "cpu")


def summary() -> str:
    """One line: the mode, why, and whether this is Colab."""
    where = " on Colab" if IS_COLAB else ""
    return f"labkit mode: {MODE}{where} ({MODE_REASON})"
