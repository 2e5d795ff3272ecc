"""GPU-only tests: every test under tests/gpu/ carries the ``gpu`` marker and is skipped, with
the reason, unless labkit runs in gpu mode (a CUDA GPU, and LABKIT_MODE not ``sim``).

    pytest -m gpu tests/gpu        # on a GPU machine
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def gpu_skip_reason() -> str | None:
    """Why GPU tests can't run here, or None when they can."""
    import labkit
    import torch

    if labkit.MODE != "gpu":
        return f"needs a CUDA GPU: labkit runs in {labkit.MODE} mode (LABKIT_MODE=gpu with a GPU runs it)"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU: torch.cuda.is_available() is False"
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (run with `pytest -m gpu`; skipped without one)")


def pytest_collection_modifyitems(config, items):
    reason = None
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.gpu)
        if item.get_closest_marker("gpu") is not None:
            reason = reason or gpu_skip_reason() or ""
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
