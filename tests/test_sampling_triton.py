"""The one-pass top-k/top-p sampling kernel and notebook 06's sampling-kernel check.

The kernel must draw from exactly the renormalised top-k/top-p distribution (chi-square
against ``labkit.decoding.sampling.probs``), and the notebook's check must accept a correct
student kernel and reject wrong ones (a uniform draw over the right set; no top-p cut) and
labkit's own kernel passed as the answer.
"""

from __future__ import annotations

import labkit  # noqa: F401, I001  (first: it picks the mode before Triton is imported)
import pytest
import torch
from labkit import runtime
from labkit.checks import nb06
from labkit.checks.core import CheckFailure
from labkit.decoding.sampling import probs
from labkit.bench.sampling import bench_sampling
from labkit.decoding.sampling_bisect import top_p_sample_kernel
from labkit.decoding.sampling_launch import sample_top_k_top_p, sample_top_p
from labkit.decoding.sampling_triton import top_k_top_p_sample_kernel
from labkit.decoding.stats import chi_square, counts_of

DEV = runtime.device()


@pytest.mark.parametrize("top_k, top_p", [(None, 0.8), (5, None), (6, 0.7), (None, None), (1, None)])
def test_distribution_matches_probs(top_k, top_p):
    torch.manual_seed(1)
    V = 24
    logits = (torch.randn(3, V) * 2).to(DEV)
    want = probs(logits.cpu(), 0.9, top_k, top_p)
    draws = sample_top_k_top_p(logits, 0.9, top_k, top_p, seed=5, num_samples=512).cpu()
    assert draws.shape == (3, 512)
    for b in range(3):
        assert bool((want[b][draws[b]] > 0).all()), "a token outside the top-k/top-p set was drawn"
        _, _, pvalue = chi_square(counts_of(draws[b], V), want[b])
        assert pvalue > 1e-4


def test_several_tiles_and_shapes():
    torch.manual_seed(2)
    V = 300  # several 16-token tiles at 512 draws (BLOCK_V = 16)
    logits = (torch.randn(2, V) * 3).to(DEV)
    want = probs(logits.cpu(), 1.0, 40, 0.9)
    draws = sample_top_k_top_p(logits, 1.0, 40, 0.9, seed=3, num_samples=512).cpu()
    for b in range(2):
        assert bool((want[b][draws[b]] > 0).all())
        assert chi_square(counts_of(draws[b], V), want[b])[2] > 1e-4
    one = sample_top_k_top_p(logits[0], 1.0, None, 0.9, seed=1)
    assert one.shape == () and 0 <= int(one) < V
    assert sample_top_k_top_p(logits, 1.0, None, 0.9, seed=1).shape == (2,)
    assert torch.equal(sample_top_k_top_p(logits, 1.0, 40, None, seed=9), sample_top_k_top_p(logits, 1.0, 40, None, seed=9))


def test_top_p_alone_searches_only_the_candidates():
    torch.manual_seed(4)
    V = 300  # BLOCK_V = 16 at 512 draws: the compacting path (V > 4 tiles)
    logits = (torch.randn(2, V) * 3).to(DEV)
    for temperature, top_p in ((1.0, 0.9), (0.7, 0.5), (2.0, 0.99)):
        want = probs(logits.cpu(), temperature, None, top_p)
        draws = sample_top_k_top_p(logits, temperature, None, top_p, seed=6, num_samples=512).cpu()
        for b in range(2):
            assert bool((want[b][draws[b]] > 0).all())
            assert chi_square(counts_of(draws[b], V), want[b])[2] > 1e-4


@pytest.mark.parametrize("top_k, top_p", [(None, 0.9), (3, 0.9), (4, None)])
def test_peaked_flat_and_masked_rows(top_k, top_p):
    """One dominant token (a single candidate: the search stops at once), a flat row (every token
    tied at the threshold: all kept), and a row with -inf logits (banned tokens never drawn)."""
    V = 37  # not a multiple of any tile
    peaked = torch.zeros(V)
    peaked[5] = 40.0
    flat = torch.full((V,), 0.25)
    masked = torch.randn(V) * 2
    masked[::3] = float("-inf")
    logits = torch.stack([peaked, flat, masked]).to(DEV)
    want = probs(logits.cpu(), 1.0, top_k, top_p)
    draws = sample_top_k_top_p(logits, 1.0, top_k, top_p, seed=11, num_samples=512).cpu()
    assert bool((draws[0] == 5).all())
    # Ties at the threshold are all kept (the sort-based reference keeps an arbitrary subset of them).
    assert chi_square(counts_of(draws[1], V), torch.full((V,), 1.0 / V))[2] > 1e-4
    assert bool((want[2][draws[2]] > 0).all()), "a banned (-inf) or cut token was drawn"
    assert chi_square(counts_of(draws[2], V), want[2])[2] > 1e-4


def test_plain_bisection_kernel_matches():
    torch.manual_seed(3)
    logits = (torch.randn(2, 40) * 2).to(DEV)
    want = probs(logits.cpu(), 1.3, None, 0.75)
    draws = sample_top_p(logits, 1.3, 0.75, seed=4, num_samples=512).cpu()
    for b in range(2):
        assert bool((want[b][draws[b]] > 0).all())
        assert chi_square(counts_of(draws[b], 40), want[b])[2] > 1e-4


@pytest.mark.parametrize("fast", [False, True])
def test_banned_tokens_filling_a_tile(fast):
    """-inf logits over the first tiles of a row: the running max stays -inf there, and a rescale by
    exp(-inf - -inf) would make the normaliser NaN and the top-p cut vanish."""
    torch.manual_seed(6)
    V = 100
    logits = (torch.randn(1, V) * 2).to(DEV)
    logits[0, :64] = float("-inf")  # 512 draws: 16-token tiles, four of them only -inf
    want = probs(logits.cpu(), 1.0, None, 0.5)[0]
    draws = (sample_top_k_top_p(logits, 1.0, None, 0.5, seed=3, num_samples=512) if fast
             else sample_top_p(logits, 1.0, 0.5, seed=3, num_samples=512)).cpu()[0]
    assert bool((want[draws] > 0).all()), "a banned token or one outside the nucleus was drawn"
    assert chi_square(counts_of(draws, V), want)[2] > 1e-4


def test_bad_arguments():
    x = torch.randn(2, 8, device=DEV)
    with pytest.raises(ValueError):
        sample_top_k_top_p(x, 0.0, None, 0.9)
    with pytest.raises(ValueError):
        sample_top_k_top_p(x, 1.0, None, 1.5)
    with pytest.raises(ValueError):
        sample_top_p(x, -1.0, 0.9)


def test_bench_in_sim_mode_checks_only():
    records = bench_sampling()
    assert records and all(r.time_ms is None for r in records) == runtime.is_sim()


def test_check_accepts_a_correct_kernel(nb06_kernels, capsys):
    nb06.check_sample_kernel(nb06_kernels["student"])
    assert "all 8 properties pass" in capsys.readouterr().out


@pytest.mark.parametrize("wrong", ["uniform_over_nucleus", "no_cut", "nan_after_banned_tile"])
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the NaN kernel's, in the interpreter
def test_check_rejects_a_wrong_kernel(nb06_kernels, wrong):
    with pytest.raises(CheckFailure) as info:
        nb06.check_sample_kernel(nb06_kernels[wrong])
    assert "chi-square" in str(info.value) or "outside the top-p set" in str(info.value)


@pytest.mark.parametrize("labkit_kernel", [top_p_sample_kernel, top_k_top_p_sample_kernel])
def test_check_rejects_labkit_kernel(labkit_kernel):
    with pytest.raises(CheckFailure, match="labkit's own implementation"):
        nb06.check_sample_kernel(labkit_kernel)


def test_kernels_compile_for_t4():
    from labkit.testing import compile_triton_many_for_t4

    sig_p = {"logits_ptr": "*fp32", "out_ptr": "*i64", "V": "i32", "stride_b": "i32", "inv_temp": "fp32",
             "top_p": "fp32", "seed": "i32"}
    sig = {**sig_p, "top_k": "i32", "cand_p_ptr": "*fp32", "cand_i_ptr": "*i32", "work_ptr": "*fp32"}
    fast = (top_k_top_p_sample_kernel, sig, {"USE_TOP_K": True, "USE_TOP_P": True,
                                             "BLOCK_V": 4096, "BLOCK_S": 1024, "NPIV": 4, "SAMPLES": 1}, 8)
    compact = (top_k_top_p_sample_kernel, sig, {"USE_TOP_K": False, "USE_TOP_P": True,
                                                "BLOCK_V": 4096, "BLOCK_S": 1024, "NPIV": 4, "SAMPLES": 1}, 8)
    plain = (top_p_sample_kernel, sig_p, {"BLOCK_V": 4096, "SAMPLES": 1}, 8)
    for build in compile_triton_many_for_t4([fast, compact, plain]):
        assert build.shared_bytes <= 64 * 1024
