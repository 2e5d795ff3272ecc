"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is faster, and far faster on a shared machine (no OpenMP spinning).

    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Notebook 06's sampling-kernel exercise: the master's answer, taken from its cell, and wrong
# kernels made from it by changing one line (the check must reject each).
NB06_PREAMBLE = "import triton\nimport triton.language as tl\nfrom labkit.decoding.sampling_launch import ordered_key\n"
NB06_WRONG = {
    # the right set, drawn uniformly: the logits left out of the Gumbel score
    "uniform_over_nucleus": ("((x - m) * inv_temp)[None, :] - tl.log(-tl.log(u))", "-tl.log(-tl.log(u))"),
    "no_cut": ("keep = valid & (ordered_key(x).to(tl.int64) >= lo)", "keep = valid"),  # top_p ignored
    # step 1 as first shipped: a tile of only -inf makes z NaN (inf - inf), and no token is cut
    "nan_after_banned_tile": ('m_ref = tl.where(m_new > float("-inf"), m_new, 0.0)', "m_ref = m_new"),
}


@pytest.fixture(scope="session")
def nb06_kernels(tmp_path_factory):
    """name -> ``@triton.jit`` kernel: "student" (the master's 06.sample_kernel cell as it is) and
    each of ``NB06_WRONG``."""
    import importlib.util

    from labkit.course.solutions import exercise_source

    source = exercise_source("06_speculative_decoding", "06.sample_kernel")
    variants = {"student": source}
    for name, (old, new) in NB06_WRONG.items():
        assert source.count(old) == 1, f"the master's cell no longer has {old!r}: update NB06_WRONG"
        variants[name] = source.replace(old, new)
    found = {}
    for name, text in variants.items():
        path = tmp_path_factory.mktemp("kernels") / f"nb06_{name}.py"
        path.write_text(NB06_PREAMBLE + text + "\n")  # Triton reads a kernel's source from its file
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found[name] = module.top_p_kernel
    return found


@pytest.fixture
def alive():
    """``alive(pid)``: whether the process runs (a zombie waiting to be reaped by init does not)."""

    def check(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    return check
