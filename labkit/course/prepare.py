"""Find submitted notebooks for ``labkit grade`` and match each to its master.

A submission is any ``.ipynb`` under the paths given; its student is named by its folder or
its file name, and its master by the master's name inside the file name, else by the exercise
ids its cells carry. What runs for a matched submission is built by
:mod:`labkit.course.graded`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from labkit.course.release import master_paths


def labkit_meta(cell) -> dict:
    """The cell's ``labkit`` metadata; ``{}`` when it has none or a student's edit left it malformed."""
    meta = cell.get("metadata", {})
    meta = meta.get("labkit", {}) if isinstance(meta, dict) else {}
    return dict(meta) if isinstance(meta, dict) else {}


class GradeError(ValueError):
    """``labkit grade`` can't start: no masters, no submissions, a folder that doesn't exist."""


@dataclass(frozen=True)
class Check:
    """One check cell of a master: the exercise it grades and its points."""

    exercise: str
    points: float


@dataclass
class Submission:
    """One submitted file. ``problem`` is set (and ``master`` may be None) when it can't be graded."""

    path: Path
    student: str
    master: str | None = None  # the master's name, e.g. "02_numba_fused"
    notebook: nbformat.NotebookNode | None = None
    problem: str = ""


@dataclass
class Masters:
    """The master notebooks by name (file stem), with their checks in notebook order."""

    notebooks: dict[str, nbformat.NotebookNode] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: str | Path) -> "Masters":
        folder = Path(folder)
        if not folder.is_dir():
            raise GradeError(f"masters folder {folder} does not exist (pass --masters DIR)")
        notebooks = {p.stem: nbformat.read(p, as_version=4) for p in master_paths(folder)}
        if not notebooks:
            raise GradeError(f"no master notebooks (*.ipynb) in {folder}")
        for name, nb in notebooks.items():
            for meta in map(labkit_meta, nb.cells):
                points = meta.get("points", 1)
                if "check" in meta and (not isinstance(points, (int, float)) or points < 0):
                    raise GradeError(f"master {name}: check {meta['check']!r} has points={points!r}; "
                                     "expected a number >= 0")
        return cls(notebooks)

    def checks(self, name: str) -> list[Check]:
        """The master's checks in order; a check without ``points`` is worth 1."""
        return [Check(str(m["check"]), float(m.get("points", 1)))
                for m in (labkit_meta(c) for c in self.notebooks[name].cells) if "check" in m]

    def ids(self, name: str) -> set[str]:
        return {str(m.get("exercise", m.get("check"))) for m in map(labkit_meta, self.notebooks[name].cells)
                if "exercise" in m or "check" in m}


def find_submissions(paths: list[str | Path], masters: Masters) -> list[Submission]:
    """Every submitted notebook under ``paths`` (files, or folders searched recursively).

    The student is the first folder below a given folder (``subs/alice/02_x.ipynb``), else the
    file name less the master's name (``alice_02_x.ipynb``). A file matches the master whose
    name it contains (the longest such), else the master whose exercise ids it shares.
    """
    found: dict[Path, tuple[Path, str | None]] = {}  # by resolved path: a file named twice is graded once
    for arg in map(Path, paths):
        if arg.is_dir():
            for p in sorted(arg.rglob("*.ipynb")):
                rel = p.relative_to(arg)
                if not any(part.startswith(".") for part in rel.parts):  # .ipynb_checkpoints
                    found.setdefault(p.resolve(), (p, rel.parts[0] if len(rel.parts) > 1 else None))
        elif arg.is_file():
            found.setdefault(arg.resolve(), (arg, None))
        else:
            raise GradeError(f"submission {arg} does not exist")
    if not found:
        raise GradeError(f"no submitted notebooks (*.ipynb) in {', '.join(map(str, paths))}")
    return [_identify(path, folder, masters) for path, folder in found.values()]


def clean_stem(stem: str) -> str:
    """A file name less what browsers, Colab and file managers add to copies and re-downloads.

    ``00_setup (1)``, ``alice_00_setup(2)``, ``Copy of 00_setup``, ``00_setup - Copy``,
    ``00_setup-checkpoint`` all lose the addition.
    """
    previous = None
    while previous != stem:
        previous = stem
        stem = re.sub(r"\s*\(\d+\)$", "", stem)  # "name (1)", "name(2)"
        stem = re.sub(r"\s*-\s*Copy(\s*\(\d+\))?$", "", stem, flags=re.I)  # "name - Copy"
        stem = re.sub(r"^Copy of\s+", "", stem, flags=re.I)  # Colab/Drive: "Copy of name"
        stem = re.sub(r"-checkpoint$", "", stem)
        stem = stem.strip()
    return stem


def _identify(path: Path, folder: str | None, masters: Masters) -> Submission:
    stem = clean_stem(path.stem)
    named = [m for m in masters.notebooks if m.lower() in stem.lower()]
    master = max(named, key=len) if named else None
    residue = re.sub(re.escape(master), "", stem, flags=re.I) if master else stem
    residue = residue.strip(" _-.")
    sub = Submission(path, folder or residue or path.parent.name or "unknown", master)
    try:
        nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
        if not all("cell_type" in c and "source" in c for c in nb.cells):
            raise ValueError("a cell has no cell_type or source")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is an error row
        sub.problem = f"not a valid notebook: {type(exc).__name__}: {str(exc)[:200]}"
        return sub
    sub.notebook = nb
    if sub.master is None:
        ids = {str(m.get("exercise", m.get("check"))) for m in map(labkit_meta, nb.cells)
               if "exercise" in m or "check" in m}
        shared = {name: len(ids & masters.ids(name)) for name in masters.notebooks}
        best = max(shared.values(), default=0)
        matches = [name for name, n in shared.items() if n == best]
        if best > 0 and len(matches) == 1:
            sub.master = matches[0]
        else:
            sub.problem = (f"matches no master notebook by name or exercise ids "
                           f"(masters: {', '.join(sorted(masters.notebooks))})")
    return sub
