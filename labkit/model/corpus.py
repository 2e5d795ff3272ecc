"""The training text (tiny Shakespeare) and its held-out tail, where prompts come from."""

from __future__ import annotations

import os
import random
from pathlib import Path

from labkit.paths import ROOT

# The repository's data/ folder; LABKIT_DATA points elsewhere (an install without the repository).
DATA_DIR = Path(os.environ.get("LABKIT_DATA") or ROOT / "data")
TEXT_PATH = DATA_DIR / "tinyshakespeare.txt"
HELDOUT_FRACTION = 0.1  # the last 10% is never trained on


def load_text(path=None) -> str:
    path = Path(path or TEXT_PATH)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the course's data/ folder ships it")
    return path.read_text()


def split(text: str) -> tuple[str, str]:
    """(train, validation): the first 90% and the last 10% of ``text``."""
    cut = int(len(text) * (1 - HELDOUT_FRACTION))
    return text[:cut], text[cut:]


def heldout_prompts(n: int, length: int = 64, *, seed: int = 0, text: str | None = None) -> list[str]:
    """``n`` prompts of ``length`` characters from the held-out text, each starting at a line start."""
    _, val = split(text if text is not None else load_text())
    starts = [i + 1 for i, c in enumerate(val[:-length - 1]) if c == "\n"]
    rng = random.Random(seed)
    return [val[s:s + length] for s in rng.sample(starts, n)]
