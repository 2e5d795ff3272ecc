"""The top-k/top-p sampling kernel on a GPU (pytest -m gpu): real vocabulary sizes.

At 32k and 128k tokens, batch 1 and 64 (the benchmark's shapes) and a peaked batch, every draw
must lie in the kept set of the sort-based reference (``labkit.decoding.sampling.probs``);
on a 1000-token vocabulary, 4096 draws per row (16 seeds × 256) must follow the reference distribution
(chi-square). Then a CUDA graph replays the kernel with new logits, and notebook 06's check
accepts the master's kernel and rejects three wrong ones. The sim-mode tests
(``tests/test_sampling_triton.py``) run the same kernel in Triton's interpreter at tiny sizes.
"""

from __future__ import annotations

import labkit  # noqa: F401  (decides the mode before triton loads)
import pytest
import torch

from labkit.decoding.graphs import capture
from labkit.decoding.sampling import probs
from labkit.decoding.sampling_launch import sample_top_k_top_p
from labkit.decoding.stats import chi_square, counts_of


@pytest.mark.parametrize("V", [32768, 131072])
@pytest.mark.parametrize("B", [1, 64])
@pytest.mark.parametrize("top_k, top_p", [(None, 0.9), (50, 0.9), (1000, None)])
def test_draws_stay_in_the_kept_set(V, B, top_k, top_p):
    g = torch.Generator(device="cuda").manual_seed(V + B)
    flat = torch.randn(B, V, device="cuda", generator=g) * 3  # about half the row can be kept
    peaked = torch.randn(B, V, device="cuda", generator=g) * 12  # a few hundred can
    for logits in (flat, peaked):
        keep = probs(logits, 0.8, top_k, top_p) > 0
        for seed in range(3):
            drawn = sample_top_k_top_p(logits, 0.8, top_k, top_p, seed=seed)
            assert drawn.shape == (B,)
            assert bool(keep.gather(1, drawn[:, None]).all()), "a token outside the kept set was drawn"


@pytest.mark.parametrize("top_k, top_p", [(None, 0.9), (40, 0.8), (200, None)])
def test_distribution_on_a_small_vocabulary(top_k, top_p):
    V = 1000
    g = torch.Generator(device="cuda").manual_seed(3)
    logits = torch.randn(4, V, device="cuda", generator=g) * 2
    want = probs(logits, 1.0, top_k, top_p).cpu()
    # 16 seeds of 256 draws: 4096 per row (one launch of 4096 draws would hold them all in registers)
    draws = torch.cat([sample_top_k_top_p(logits, 1.0, top_k, top_p, seed=s, num_samples=256)
                       for s in range(16)], dim=1).cpu()
    for b in range(4):
        assert bool((want[b][draws[b]] > 0).all())
        assert chi_square(counts_of(draws[b], V), want[b])[2] > 1e-4


def test_replays_in_a_cuda_graph():
    V = 131072
    logits = torch.randn(8, V, device="cuda") * 3
    graph, out = capture(lambda: sample_top_k_top_p(logits, 1.0, None, 0.9, seed=1))
    logits.copy_(torch.full((8, V), -5.0, device="cuda").index_fill_(1, torch.tensor([77], device="cuda"), 30.0))
    graph.replay()
    torch.cuda.synchronize()
    assert bool((out == 77).all()), "the graph did not sample from the new logits"


def test_nb06_check_on_the_gpu(nb06_kernels, capsys):
    """Notebook 06's check, run as a student on a GPU runs it: the master's kernel passes, the
    one-line-wrong kernels fail (fixture in tests/conftest.py)."""
    from labkit.checks import nb06
    from labkit.checks.core import CheckFailure

    nb06.check_sample_kernel(nb06_kernels["student"])
    assert "all 8 properties pass" in capsys.readouterr().out
    for wrong in ("uniform_over_nucleus", "no_cut", "nan_after_banned_tile"):
        with pytest.raises(CheckFailure):
            nb06.check_sample_kernel(nb06_kernels[wrong])
