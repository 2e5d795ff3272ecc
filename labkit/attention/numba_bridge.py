"""Torch tensors into Numba CUDA kernels: no copies, torch's stream, the same code in both modes.

* gpu mode: a CUDA tensor becomes a Numba ``DeviceNDArray`` through the CUDA array interface
  (``numba.cuda.as_cuda_array`` semantics). Passing the tensor itself to a kernel also works
  but costs tens of microseconds a launch, because Numba then re-derives the array's type
  and pointer from ``__cuda_array_interface__`` on every call. Kernels are launched on torch's
  current stream: the array interface carries no stream, so without this torch's work and
  Numba's would not be ordered.
* sim mode: the simulator has no ``as_cuda_array`` and no external streams; a CPU tensor's
  ``.numpy()`` view is what it takes (the simulator copies arguments in and writes them back
  after the launch, so results land in the tensor). Its shared arrays are made thread-safe
  here (see :func:`_lock_simulated_shared_arrays`).
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections import OrderedDict
from contextlib import contextmanager

import torch

from labkit import runtime

# Decode launches with few blocks are deliberate here (the exercises, the merge of split-K);
# Numba's warning about them would also make a check cell's output differ between modes.
# On a GPU host Numba may wrap the message in terminal colour codes ("\x1b[1mGrid size ..."), so
# the pattern must not be anchored at the message's first character.
warnings.filterwarnings("ignore", message=r".*Grid size \d+ will likely result in GPU under-utilization")

_VIEWS: OrderedDict = OrderedDict()  # (device, ptr, shape, strides, dtype) -> DeviceNDArray
_MAX_VIEWS = 1024  # input sets rotated past the L2 (up to 64 of q, k, v, out) must all stay cached
SIM_SWITCH_INTERVAL_S = 5e-5  # GIL switch interval while a simulated kernel runs (see launch)


def as_numba(t: torch.Tensor):
    """A zero-copy view of tensor ``t`` that a Numba CUDA kernel accepts.

    gpu mode: a ``DeviceNDArray`` over the tensor's memory. The views are cached by address,
    shape, strides and dtype and hold no reference to the tensor, so wrapping the same
    buffer again (the common case: torch's caching allocator hands the same blocks back)
    costs a dictionary lookup; a view describes memory, so it stays right for any live tensor
    with that exact layout. sim mode: ``t.numpy()`` (``t`` must be on the CPU).
    """
    if runtime.is_sim():
        return t.detach().numpy()
    from numba import cuda

    key = (t.device.index, t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)
    view = _VIEWS.get(key)
    if view is None:
        # owner=None: the view must not keep the tensor alive (the cache would leak memory).
        view = cuda.from_cuda_array_interface(t.detach().__cuda_array_interface__, owner=None, sync=False)
        _VIEWS[key] = view
        if len(_VIEWS) > _MAX_VIEWS:
            _VIEWS.popitem(last=False)  # the least recently used
    else:
        _VIEWS.move_to_end(key)
    return view


_STREAMS: dict = {}


def torch_stream():
    """Numba's handle on torch's current CUDA stream (gpu mode); ``0`` in sim mode."""
    if runtime.is_sim():
        return 0
    from numba import cuda

    handle = torch.cuda.current_stream().cuda_stream
    stream = _STREAMS.get(handle)
    if stream is None:
        stream = _STREAMS[handle] = cuda.external_stream(handle)
    return stream


@contextmanager
def _quick_thread_switches():
    """The simulator runs each CUDA thread as a Python thread, and a polling thread releases them
    from ``syncthreads``. At Python's default GIL switch interval (5 ms) they mostly wait for
    each other; a 50 µs interval makes a simulated launch several times faster."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SIM_SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _lock_simulated_shared_arrays() -> None:
    """Make the simulator's ``cuda.shared.array`` hand every thread of a block the same array.

    The simulator keeps a launch's shared arrays in a dict keyed by the allocating source line
    and fills it on first use, unlocked: a thread switch between its lookup and its store gives
    two threads two different arrays, and the block computes garbage (about one launch in 500
    at :data:`SIM_SWITCH_INTERVAL_S`; it failed a sim-mode test in CI). This does the lookup and
    the store under one lock, and finds the caller's line without walking the stack.
    """
    from numba.cuda.simulator import kernelapi as api  # types and numpy_support as this version has them

    shared = getattr(api, "FakeCUDAShared", None)
    original = getattr(shared, "array", None)
    if original is None or getattr(original, "_labkit", False) or not hasattr(shared(0), "_allocations"):
        return  # patched already, or a layout this does not know

    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory (one buffer already), or refused
            return original(self, shape, dtype, alignment)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)  # the simulator's own key
        with lock:
            res = self._allocations.get(key)
            if res is None:
                as_np = api.numpy_support.as_dtype(dtype) if isinstance(dtype, api.types.Type) else dtype
                res = self._allocations[key] = api.np.empty(shape, as_np)
        return res

    array._labkit = True
    shared.array = array


if runtime.is_sim():
    _lock_simulated_shared_arrays()


_SPECIALIZED: dict = {}  # (kernel, device, argument kinds) -> dispatcher specialized for them


def _specialized(kernel, args, converted):
    """``kernel`` specialized for these arguments' types, compiled once per type signature.

    A plain dispatcher works out the Numba type of every argument on every launch; a
    specialized one goes straight to its single compiled kernel, which saves tens of
    microseconds a launch. The key is what decides the Numba types (dtype, rank and
    contiguity of each tensor, the Python type of each scalar) and the device.
    """
    key = (kernel,) + tuple((a.device.index, a.dtype, a.dim(), a.is_contiguous()) if isinstance(a, torch.Tensor)
                            else type(a) for a in args)
    spec = _SPECIALIZED.get(key)
    if spec is None:
        spec = _SPECIALIZED[key] = kernel.specialize(*converted)
    return spec


def launch(kernel, grid, block, *args) -> None:
    """Launch ``kernel[grid, block]`` on torch's current stream with ``args`` (tensors or scalars).

    Tensors are passed through :func:`as_numba`; everything else as it is. On a GPU the
    kernel is specialized for the arguments' types (see :func:`_specialized`).
    """
    converted = [as_numba(a) if isinstance(a, torch.Tensor) else a for a in args]
    if runtime.is_sim():
        with _quick_thread_switches():
            kernel[grid, block](*converted)
    else:
        _configured(_specialized(kernel, args, converted), grid, block)(*converted)


def resident_blocks(kernel, threads: int, *args) -> int | None:
    """How many blocks of ``threads`` threads of ``kernel`` (specialized for ``args``) one SM runs at once.

    The driver's occupancy calculator (``cuOccupancyMaxActiveBlocksPerMultiprocessor``, which
    Numba's ``max_cooperative_grid_blocks`` multiplies by the SM count) from the compiled
    kernel's registers and shared memory. ``None`` in sim mode.
    """
    if runtime.is_sim():
        return None
    converted = [as_numba(a) if isinstance(a, torch.Tensor) else a for a in args]
    spec = _specialized(kernel, args, converted)
    key = (spec, threads)
    if key not in _RESIDENT:
        from numba import cuda

        (compiled,) = spec.overloads.values()  # a specialized dispatcher holds exactly one kernel
        per_grid = compiled.max_cooperative_grid_blocks(threads)
        _RESIDENT[key] = max(1, per_grid // cuda.get_current_device().MULTIPROCESSOR_COUNT)
    return _RESIDENT[key]


_RESIDENT: dict = {}
_CONFIGURED: OrderedDict = OrderedDict()  # (kernel, grid, block, stream handle) -> configured launch
_MAX_CONFIGURED = 256


def _configured(kernel, grid, block):
    """``kernel[grid, block, stream]`` on torch's current stream, built once per launch shape.

    Configuring a launch normalises the dimensions, wraps the stream for the driver and runs
    Numba's occupancy check (building a warning for small grids); a configured launch can be
    called again and again, so decode's repeated launches of one shape pay for that once.
    """
    handle = torch.cuda.current_stream().cuda_stream
    key = (kernel, grid, block, handle)
    conf = _CONFIGURED.get(key)
    if conf is None:
        conf = _CONFIGURED[key] = kernel[grid, block, torch_stream()]
        if len(_CONFIGURED) > _MAX_CONFIGURED:
            _CONFIGURED.popitem(last=False)
    return conf


__all__ = ["as_numba", "launch", "resident_blocks", "torch_stream"]
