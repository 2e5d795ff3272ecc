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
    return _fresh_notebook(cells, student.get("metadata", {}))


def _fresh_notebook(cells, metadata) -> nbformat.NotebookNode:
    """A valid notebook of ``cells`` to run: no outputs or execution data, unique cell ids."""
    seen: set[str] = set()
    for cell in cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.get("metadata", {}).pop("execution", None)
        if not cell.get("id") or cell.id in seen:
            cell.id = uuid.uuid4().hex[:12]
        seen.add(cell.id)
    nb = nbformat.v4.new_notebook(metadata=copy.deepcopy(metadata))
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


# ---------------------------------------------------------------- the notebook that is graded

PRISTINE = "__LABKIT_PRISTINE__"  # replaced, when a run starts, by its slot's pristine copy

FRESH_CHECK = '''# NBVAL_CHECK_OUTPUT
# labkit grade: the master's check, run with {modules} loaded fresh from the pristine copy
# (never the module objects a notebook cell could have patched).
def _labkit_grade_check(_source, _ns):
    import importlib.util as _u
    import sys as _sys
    import types as _t
    _names = {modules!r}
    _fresh, _saved = {{}}, {{_n: _sys.modules.get(_n) for _n in _names}}
    _pkg = _sys.modules.get("labkit.checks")
    _attrs = {{_n: getattr(_pkg, _n.rsplit(".", 1)[1], None) for _n in _names}} if _pkg is not None else {{}}
    try:
        for _name in _names:
            _spec = _u.spec_from_file_location(_name, {root!r} + "/" + _name.replace(".", "/") + ".py")
            _mod = _fresh[_name] = _u.module_from_spec(_spec)
            _sys.modules[_name] = _mod
            _spec.loader.exec_module(_mod)
            if _pkg is not None:
                setattr(_pkg, _name.rsplit(".", 1)[1], _mod)
        _env = dict(_ns)
        _short = {{_n.rsplit(".", 1)[1]: _m for _n, _m in _fresh.items()}}
        _env.update({{_k: _v for _k, _v in _short.items() if _k != "core"}})
        _env["checks"] = _t.SimpleNamespace(**_short)
        exec(compile(_source, "<check {exercise}>", "exec"), _env)
    finally:
        for _name, _mod in _saved.items():
            if _mod is None:
                _sys.modules.pop(_name, None)
            else:
                _sys.modules[_name] = _mod
        for _name, _mod in _attrs.items():
            if _mod is not None:
                setattr(_pkg, _name.rsplit(".", 1)[1], _mod)
_labkit_grade_check({source!r}, globals())
del _labkit_grade_check
'''


def fresh_check_source(master_source: str, exercise: str) -> str:
    """A check cell's code as graded: the master's ``source`` run against fresh check modules.

    ``labkit.checks.core`` and, when the source names it, ``labkit.checks.nbNN`` are executed anew
    from the pristine copy as new module objects, installed in ``sys.modules`` only while the
    check runs; ``nbNN`` and ``checks`` in the source refer to them.
    """
    number = exercise.split(".")[0]
    short = f"nb{number}"
    body = "\n".join(ln for ln in master_source.splitlines() if ln.strip() != "# NBVAL_CHECK_OUTPUT")
    modules = ("labkit.checks.core",)
    if re.search(rf"\b{short}\b", body):
        modules += (f"labkit.checks.{short}",)
    return FRESH_CHECK.format(modules=modules, root=PRISTINE, exercise=exercise, source=body)


@dataclass
class Graded:
    """The notebook to run, and where each of its code cells came from."""

    notebook: nbformat.NotebookNode
    # per code cell: ("master" | "exercise" | "extra" | "check", its number in the student's notebook or None)
    origins: list[tuple[str, int | None]]
    exercises: dict[str, tuple[int, str]]  # exercise -> (student cell number, source) of the cell graded
    extras: list[tuple[int, str]]  # the student's extra code cells that run: (cell number, source)


def build_graded(student: nbformat.NotebookNode, master: nbformat.NotebookNode, name: str) -> Graded:
    """The notebook graded for ``student``: built from ``master``, see the module's "Built from the master".

    * every cell of the master runs as released (the student's edits of them are not run), except
    * each exercise cell, which is the student's (the last cell carrying that exercise id), and
    * each check cell, which is the master's check run against fresh check modules;
    * the student's extra code cells (neither an exercise nor a master cell) run right after the
      master or exercise cell they followed in the student's notebook.

    Cell numbers recorded are 1-based positions in the student's notebook, as the student counts them.
    """
    from labkit.course.release import student_notebook

    released = student_notebook(master, name)
    ids = {c.get("id") for c in released.cells if c.get("id")}
    plain = [i for i, c in enumerate(released.cells) if not {"exercise", "check"} & set(labkit_meta(c))]
    sources = {cells.source.strip() for i in plain for cells in (released.cells[i], master.cells[i])
               if cells.cell_type == "code"}
    by_id = {c.get("id"): i for i, c in enumerate(released.cells) if c.get("id")}
    by_source, by_text = {}, {}
    for i, c in enumerate(released.cells):
        (by_source if c.cell_type == "code" else by_text).setdefault(c.source.strip(), i)
    ex_index = {str(labkit_meta(c)["exercise"]): i for i, c in enumerate(released.cells)
                if "exercise" in labkit_meta(c)}
    check_index = {str(labkit_meta(c)["check"]): i for i, c in enumerate(released.cells) if "check" in labkit_meta(c)}
    exercises: dict[str, tuple[int, nbformat.NotebookNode]] = {}
    extras: dict[int, list[tuple[int, nbformat.NotebookNode]]] = {}
    seen_master: dict[int, int] = {}
    anchor = -1
    for number, cell in enumerate(student.cells, 1):
        meta = labkit_meta(cell)
        if "check" in meta:  # never run (the master's is), but the student's next cells go after it
            anchor = check_index.get(str(meta["check"]), anchor)
            continue
        if str(meta.get("exercise")) in ex_index and cell.cell_type == "code":
            exercises[str(meta["exercise"])] = (number, cell)
            anchor = ex_index[str(meta["exercise"])]
            continue
        src = cell.source.strip()
        if cell.cell_type != "code":  # text: not run, but it tells where the student's next cells are
            index = by_id.get(cell.get("id")) if cell.get("id") in by_id else by_text.get(src)
            if index is not None and index not in ex_index.values() \
                    and "check" not in labkit_meta(released.cells[index]):
                anchor = index
            continue
        if cell.get("id") in ids and cell.get("id") in by_id and by_id[cell.get("id")] not in ex_index.values():
            anchor = by_id[cell["id"]]
            seen_master.setdefault(anchor, number)
            continue
        if src in sources or not src:
            if src in by_source:
                anchor = by_source[src]
                seen_master.setdefault(anchor, number)
            continue
        extras.setdefault(anchor, []).append((number, cell))
    cells, origins = [], []

    def emit(cell, origin, number):
        cell = copy.deepcopy(cell)
        cells.append(cell)
        if cell.cell_type == "code":
            origins.append((origin, number))

    for number, cell in extras.get(-1, []):
        emit(cell, "extra", number)
    for index, rcell in enumerate(released.cells):
        meta = labkit_meta(rcell)
        if "check" in meta:
            mcell = copy.deepcopy(master.cells[index])
            mcell.source = fresh_check_source(mcell.source, str(meta["check"]))
            emit(mcell, "check", None)
        elif "exercise" in meta:
            if str(meta["exercise"]) in exercises:
                number, scell = exercises[str(meta["exercise"])]
                scell = copy.deepcopy(scell)
                scell.metadata = copy.deepcopy(rcell.metadata)
                emit(scell, "exercise", number)
            # no exercise cell of that id: nothing runs in its place (the student's code may be an extra cell)
        else:
            emit(rcell, "master", seen_master.get(index))
        for number, cell in extras.get(index, []):
            emit(cell, "extra", number)
    nb = _fresh_notebook(cells, master.get("metadata", {}))
    return Graded(nb, origins, {ex: (n, c.source) for ex, (n, c) in exercises.items()},
                  [(n, c.source) for group in extras.values() for n, c in group])
