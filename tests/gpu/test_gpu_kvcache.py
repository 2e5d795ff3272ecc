"""The paged cache's stateful property test on the GPU (pytest -m gpu).

tests/test_kvcache.py's hypothesis state machine (new/append/fork/truncate/free against a
shadow of plain tensors; exact bookkeeping, every sequence reads back its own tokens, paged
attention equals float64 attention) runs here in gpu mode: its writes and paged attention go
to the cache's device, the GPU, its checks compare on the CPU. The same machine and settings
as in sim mode, as gpu_run.sh's ``stateful`` stage ran it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("labkit_tests_kvcache", Path(__file__).resolve().parents[1]
                                               / "test_kvcache.py")
_kvcache = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_kvcache)


class TestPagedCacheOnGPU(_kvcache.TestPagedCache):
    """The state machine's TestCase, collected here so ``-m gpu`` selects it."""
