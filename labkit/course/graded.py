"""The notebook ``labkit grade`` runs for one submission, built from the master.

A submission is graded by the master's cells, never by the student's copies of them:

* every cell of the master runs as released (a student's edit of one is not run), except
* each exercise cell, which is the student's (the last cell carrying that
  ``{"labkit": {"exercise": id}}``), and
* each check cell, which is the master's, run against check modules loaded fresh from the
  pristine copy of labkit (:func:`fresh_check_source`);
* the student's extra code cells (neither an exercise nor a master cell) run right after the
  master or exercise cell they followed in the student's notebook.

Outputs and execution counts are cleared, so nbval compares no outputs: a check is judged only
by whether it raises, and a student's extra prints or warnings never cost points.
"""

from __future__ import annotations

import copy
import re
import uuid
from dataclasses import dataclass

import nbformat

from labkit.course.prepare import labkit_meta


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


PRISTINE = "__LABKIT_PRISTINE__"  # replaced, when a run starts, by its slot's pristine copy

# Every builtin the wrapper uses is reached through ``builtins`` imported inside it: a notebook cell can
# bind ``exec``, ``compile`` or ``dict`` in the namespace this runs in, never the names of a function's locals.
FRESH_CHECK = '''# NBVAL_CHECK_OUTPUT
# labkit grade: the master's check, run with {modules} loaded fresh from the pristine copy
# (never the module objects a notebook cell could have patched).
def _labkit_grade_check(_source):
    import builtins as _b
    import importlib.util as _u
    import sys as _sys
    import types as _t
    _names = {modules!r}
    _fresh, _saved = {{}}, {{_n: _sys.modules.get(_n) for _n in _names}}
    _pkg = _sys.modules.get("labkit.checks")
    _attrs = {{_n: _b.getattr(_pkg, _n.rsplit(".", 1)[1], None) for _n in _names}} if _pkg is not None else {{}}
    try:
        for _name in _names:
            _spec = _u.spec_from_file_location(_name, {root!r} + "/" + _name.replace(".", "/") + ".py")
            _mod = _fresh[_name] = _u.module_from_spec(_spec)
            _sys.modules[_name] = _mod
            _spec.loader.exec_module(_mod)
            if _pkg is not None:
                _b.setattr(_pkg, _name.rsplit(".", 1)[1], _mod)
        _env = _b.dict(_b.globals())
        _short = {{_n.rsplit(".", 1)[1]: _m for _n, _m in _fresh.items()}}
        _env.update({{_k: _v for _k, _v in _short.items() if _k != "core"}})
        _env["checks"] = _t.SimpleNamespace(**_short)
        _env["__builtins__"] = _b
        _b.exec(_b.compile(_source, "<check {exercise}>", "exec"), _env)
    finally:
        for _name, _mod in _saved.items():
            if _mod is None:
                _sys.modules.pop(_name, None)
            else:
                _sys.modules[_name] = _mod
        for _name, _mod in _attrs.items():
            if _mod is not None:
                _b.setattr(_pkg, _name.rsplit(".", 1)[1], _mod)
_labkit_grade_check({source!r})
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
    """The notebook graded for ``student``: built from ``master`` as the module docstring says.

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
