"""The versions the course is tested on: the oldest (Google Colab's image) and the newest releases.

CI runs the whole suite, notebooks included, in two environments every time: *Colab floor*
(the oldest column, installed first, then labkit with the Colab setup cell's own commands) and
*newest* (what ``make test`` installs on a fresh machine today). ``pyproject.toml``'s lower
bounds are the oldest column (a test checks they agree), the README's "Supported versions"
table shows both, and ``labkit doctor`` warns, with the fix, when an installed version is
outside the range.

Where CI can't run Colab's exact build it says so in ``NOTES`` (and the README).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Tested:
    name: str  # distribution name, as pip knows it
    oldest: str  # Colab's version: the oldest the course is tested on
    newest: str  # the newest release tested (a series: "3.9" covers 3.9.x)
    linux_only: bool = False  # installs on Linux only (Triton): labkit installs without it elsewhere
    not_on: tuple[str, ...] = ()  # systems with no build of it (labkit installs without it there)


# Edit together with pyproject.toml (lower bounds), .ci/colab-floor.txt and the README's table.
TESTED = (
    Tested("python", "3.11", "3.13"),
    Tested("torch", "2.11", "2.13"),
    Tested("triton", "3.6", "3.9", linux_only=True),
    Tested("numba", "0.61", "0.68"),
    Tested("numba-cuda", "0.22", "0.30", not_on=("Darwin",)),  # macOS: Numba's own simulator runs instead
    Tested("numpy", "2.1", "2.4"),
    Tested("ipywidgets", "7.7", "8.1"),
    Tested("matplotlib", "3.10", "3.11"),
)

NOTES = {
    "python": "CI runs 3.11 (the CPU build of torch it installs is for 3.11); Colab runs 3.13",
    "torch": "Colab's 2.11 is a CUDA build; CI's floor runs the nearest CPU build, 2.13",
}

# Where an upgrade must not touch a package: Colab ships its own and a reinstall breaks it.
COLAB_KEEPS = ("torch", "triton", "ipywidgets")


def parse(version: str) -> tuple[int, ...]:
    """``"2.13.0+cpu"`` -> ``(2, 13, 0)``: the leading numeric release, local tags and suffixes dropped."""
    parts = []
    for piece in version.split("+")[0].split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
        if m.group() != piece:  # "0rc1": keep 0, stop
            break
    return tuple(parts)


def status(t: Tested, installed: str | None) -> str:
    """``"ok"``, ``"older"`` (below the oldest tested), ``"newer"`` (past the newest series) or ``"missing"``."""
    if not installed:
        return "missing"
    v = parse(installed)
    if v < parse(t.oldest):
        return "older"
    newest = parse(t.newest)
    if v[:len(newest)] > newest:
        return "newer"
    return "ok"


def advice(t: Tested, installed: str, state: str, *, colab: bool = False) -> str:
    """What to do about a version outside the tested range (one line, a command where one helps)."""
    if t.name == "python":
        if state == "older":
            return f"use Python {t.oldest} or newer (a new venv: python3.{parse(t.oldest)[1]} -m venv .venv)"
        return (f"Python {installed} is newer than the newest tested ({t.newest}); if a package fails to "
                f"install, use Python {t.newest}")
    if colab and t.name in COLAB_KEEPS:
        return (f"keep Colab's {t.name} (never reinstall it there); if a notebook fails, tell your instructor "
                f"the versions above: the course is tested on {t.name} {t.oldest} to {t.newest}")
    if state == "older":
        return f"pip install -U '{t.name}>={t.oldest}'"
    nxt = parse(t.newest)
    upper = ".".join(str(x) for x in (*nxt[:-1], nxt[-1] + 1))
    return (f"newer than the newest tested ({t.newest}); if a notebook fails, pip install "
            f"'{t.name}>={t.oldest},<{upper}' and report the failure")


def lower_bounds() -> dict[str, str]:
    """The ``>=`` bound pyproject.toml must declare for each package."""
    return {t.name: t.oldest for t in TESTED if t.name != "python"}


__all__ = ["COLAB_KEEPS", "NOTES", "TESTED", "Tested", "advice", "lower_bounds", "parse", "status"]
