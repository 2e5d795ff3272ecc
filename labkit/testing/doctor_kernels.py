"""What ``labkit doctor`` runs: two tiny kernels, then one small instance of each kernel family
the notebooks use, each checked against the float64 reference.

The tiny kernels live at module level because Numba's simulator swaps ``cuda`` in a kernel's
module globals; a kernel defined inside a function would see the real ``numba.cuda`` there.
Triton is imported only where it is installed (Linux): on macOS and Windows the Numba checks
still run and the Triton ones are reported as needing Linux or Colab.
"""

import labkit  # noqa: F401,I001  (the mode must be set before numba and triton load)
from numba import cuda

try:
    import triton
    import triton.language as tl
except ModuleNotFoundError as _exc:  # Triton installs on Linux only
    if not (_exc.name or "").startswith("triton"):
        raise
    triton = tl = None


@cuda.jit
def axpy(out, x, y, a):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a * x[i] + y[i]


if triton is not None:

    @triton.jit
    def scale_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(out_ptr + offs, 3.0 * tl.load(x_ptr + offs, mask=mask), mask=mask)

    @triton.jit
    def scalar_mask_kernel(x_ptr, out_ptr, n, row, num_rows, BLOCK: tl.constexpr):
        # A mask built from a scalar condition, as the RoPE write and the paged kernel build
        # theirs (Triton 3.9's interpreter refused such masks until labkit converted them).
        offs = tl.arange(0, BLOCK)
        inside = (row >= 0) & (row < num_rows)
        mask = (offs < n) & inside
        tl.store(out_ptr + offs, 3.0 * tl.load(x_ptr + offs, mask=mask, other=0.0), mask=mask)


def _rel_error(got, want) -> float:
    # the float64 references may live on the CPU while the kernel's output is on the GPU
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def _qkv(B, Hq, Hkv, T, D, dtype, seed):
    import torch

    from labkit import runtime

    g = torch.Generator().manual_seed(seed)
    dev = runtime.device()
    return [torch.randn(*shape, generator=g, dtype=torch.float32).to(dev, dtype)
            for shape in ((B, Hq, D), (B, Hkv, T, D), (B, Hkv, T, D))]


def numba_fused(seed: int = 0) -> float:
    """Notebook 02's kernel family: the fused one-pass Numba decode, a small instance. Relative error."""
    import torch

    from labkit.attention import decode_attention, reference_decode

    q, k, v = _qkv(1, 2, 1, 19, 64, torch.float32, seed)
    return _rel_error(decode_attention(q, k, v, impl="numba"), reference_decode(q, k, v))


def triton_split_k(seed: int = 0) -> float:
    """Notebook 03's family: Triton flash-decoding with split-K and the log-sum-exp merge (GQA 4/2)."""
    import torch

    from labkit.attention import decode_attention, reference_decode

    q, k, v = _qkv(2, 4, 2, 37, 16, torch.float32, seed)
    return _rel_error(decode_attention(q, k, v, impl="triton_splitk", num_splits=3), reference_decode(q, k, v))


def rope_write(seed: int = 0) -> float:
    """Notebook 04's family: the fused RoPE-and-write into a cache, tokens at different positions."""
    import torch

    from labkit import runtime
    from labkit.rope.write import write_kv_rope
    from labkit.rope import apply_rope, rope_tables

    dev = runtime.device()
    g = torch.Generator().manual_seed(seed)
    N, H, D, S = 3, 2, 16, 8
    k_new, v_new = (torch.randn(N, H, D, generator=g).to(dev) for _ in range(2))
    k_cache, v_cache = torch.zeros(2, H, S, D, device=dev), torch.zeros(2, H, S, D, device=dev)
    rows = torch.tensor([0, 1, 1], device=dev)
    slots = torch.tensor([2, 0, 7], device=dev)
    positions = torch.tensor([2, 0, 7], device=dev)
    cos, sin = rope_tables(S, D, device=dev)
    write_kv_rope(k_new, v_new, k_cache, v_cache, rows, slots, (cos, sin, positions))
    want_k = apply_rope(k_new.double(), positions[:, None], cos, sin)
    got_k = k_cache[rows, :, slots]
    got_v = v_cache[rows, :, slots]
    return max(_rel_error(got_k, want_k), _rel_error(got_v, v_new))


def paged(seed: int = 0) -> float:
    """Notebook 05's family: decode attention through block tables (blocks out of order)."""
    import torch

    from labkit import runtime
    from labkit.kvcache.paged_attention import paged_decode, paged_reference

    dev = runtime.device()
    g = torch.Generator().manual_seed(seed)
    B, Hq, Hkv, BS, D = 2, 2, 1, 4, 16
    k_pool, v_pool = (torch.randn(6, Hkv, BS, D, generator=g).to(dev) for _ in range(2))
    q = torch.randn(B, Hq, D, generator=g).to(dev)
    tables = torch.tensor([[4, 1, 0], [2, 5, 3]], dtype=torch.int32, device=dev)
    lengths = torch.tensor([9, 5], dtype=torch.int32, device=dev)
    return _rel_error(paged_decode(q, k_pool, v_pool, tables, lengths), paged_reference(q, k_pool, v_pool, tables, lengths))


# (name, notebooks, function, needs Triton): what `labkit doctor` runs after the tiny kernels.
FAMILIES = (
    ("Numba fused decode", "02", numba_fused, False),
    ("Triton split-K decode", "03", triton_split_k, True),
    ("Triton RoPE write", "04", rope_write, True),
    ("Triton paged decode", "05, 07", paged, True),
)
