"""Hints on demand: ``labkit.hint("02.fused_kernel", 1)`` shows an exercise's first hint.

Each exercise's hints live in ``labkit/course/hints/<exercise>.md`` as ``## Hint 1``,
``## Hint 2``, … sections, the last one close to the answer, and an optional ``## Answer``
section that answers a question cell (plots, "what do you expect"). Hints are meant to be read:
they are course text, not a solution module, and no check depends on them.
"""

from __future__ import annotations

import re
from pathlib import Path

HINTS_DIR = Path(__file__).with_name("hints")

_SECTION = re.compile(r"^## +(Hint +(\d+)|Answer)\s*$", re.MULTILINE)


def _sections(exercise: str) -> dict[str, str]:
    path = HINTS_DIR / f"{exercise}.md"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in HINTS_DIR.glob("*.md"))) or "none"
        raise KeyError(f"no hints for exercise {exercise!r}; exercises with hints: {known}")
    text = path.read_text(encoding="utf-8")
    marks = list(_SECTION.finditer(text))
    out = {}
    for m, nxt in zip(marks, marks[1:] + [None]):
        body = text[m.end() : nxt.start() if nxt else len(text)].strip()
        out[m.group(2) or "answer"] = body
    return out


def hint_count(exercise: str) -> int:
    """How many numbered hints ``exercise`` has."""
    return sum(1 for key in _sections(exercise) if key.isdigit())


def hint_text(exercise: str, n: int | str = 1) -> str:
    """The text of hint ``n`` (1-based) of ``exercise``, or its answer when ``n == "answer"``."""
    sections = _sections(exercise)
    key = str(n)
    if key not in sections:
        count = hint_count(exercise)
        raise KeyError(f"exercise {exercise!r} has hints 1..{count}" + (" and an answer" if "answer" in sections else "")
                       + f"; asked for {n!r}")
    return sections[key]


def hint(exercise: str, n: int | str = 1) -> None:
    """Show hint ``n`` of ``exercise`` (rendered as Markdown in a notebook, printed elsewhere)."""
    count = hint_count(exercise)
    title = "Answer" if str(n) == "answer" else f"Hint {n} of {count}"
    body = f"**{exercise} · {title}**\n\n{hint_text(exercise, n)}"
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            display(Markdown(body))
            return
    except ImportError:
        pass
    print(body)


__all__ = ["hint", "hint_count", "hint_text", "HINTS_DIR"]
