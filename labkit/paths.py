"""Where the checkout's folders are: ``ROOT`` holds ``labkit/``, ``solutions/``, ``notebooks/`` and ``data/``."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["ROOT"]
