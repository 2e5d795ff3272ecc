"""Prepare submitted notebooks for ``labkit grade``: find them, match each to its master, restore the checks.

A submission is graded by the master's check cells, never by the student's copies. Every cell
of the submission that carries ``{"labkit": {"check": ...}}`` metadata is dropped, and each
check cell of the master is put back:

* after the student's cell with the same ``{"labkit": {"exercise": id}}`` (and after any cells
  of the student's that the master also has between that exercise and its check), or
* at its position in the master when the student's notebook has no such exercise cell.

The student's other cells are kept as they are. Outputs and execution counts are cleared, so
nbval compares no outputs: a check is judged only by whether it raises, and a student's
extra prints or warnings never cost points.
"""

from __future__ import annotations

import copy
import re
import uuid
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


def _identify(path: Path, folder: str | None, masters: Masters) -> Submission:
    stem = path.stem
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


def restore_checks(student: nbformat.NotebookNode, master: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook to grade: the student's cells with every check cell taken from the master.

    Outputs are cleared and cell ids made unique; the result is a valid nbformat 4.5 notebook.
    """
    cells = [copy.deepcopy(c) for c in student.cells if "check" not in labkit_meta(c)]
    restored: set[int] = set()  # id() of the check cells put back
    for index, mcell in enumerate(master.cells):
        meta = labkit_meta(mcell)
        if "check" not in meta:
            continue
        at = _insertion_point(cells, restored, master.cells, index, str(meta["check"]))
        check = copy.deepcopy(mcell)
        cells.insert(at, check)
        restored.add(id(check))
    seen: set[str] = set()
    for cell in cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.get("metadata", {}).pop("execution", None)
        if not cell.get("id") or cell.id in seen:
            cell.id = uuid.uuid4().hex[:12]
        seen.add(cell.id)
    nb = nbformat.v4.new_notebook(metadata=copy.deepcopy(student.get("metadata", {})))
    nb.cells = cells
    nbformat.validate(nb)
    return nb


def _insertion_point(cells, restored, master_cells, check_index: int, exercise: str) -> int:
    """Where the master's check at ``check_index`` goes in ``cells`` (see the module docstring)."""
    hits = [i for i, c in enumerate(cells) if labkit_meta(c).get("exercise") == exercise]
    if not hits:
        return min(check_index, len(cells))
    ex_master = max((i for i, c in enumerate(master_cells[:check_index])
                     if labkit_meta(c).get("exercise") == exercise), default=check_index)
    between = master_cells[ex_master + 1:check_index]
    ids = {c.get("id") for c in between if c.get("id")}
    sources = {c.source for c in between if c.cell_type == "code"}
    at = hits[-1] + 1
    while at < len(cells) and (id(cells[at]) in restored or cells[at].get("id") in ids
                               or (cells[at].cell_type == "code" and cells[at].source in sources)):
        at += 1
    return at
