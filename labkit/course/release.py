"""``labkit release``: write the student notebooks in ``notebooks/`` from the masters in ``solutions/``.

Conventions in a master notebook:

* An **exercise cell** has cell metadata ``{"labkit": {"exercise": "02.fused_kernel"}}`` and
  marks its solution with lines ``### BEGIN SOLUTION`` and ``### END SOLUTION``. The release
  replaces each region with ``raise NotImplementedError("Exercise 02.fused_kernel: ...")``
  at the indentation of the ``BEGIN`` line.
* A **check cell** has ``{"labkit": {"check": "02.fused_kernel", "points": 3}}`` and calls a
  check in :mod:`labkit.checks`. It is kept as it is (``labkit grade`` restores it from the
  master by this metadata).
* Every output and execution count is stripped; cell ids and metadata are kept, so a
  release is byte-for-byte reproducible and ``--check`` can compare.
* The **setup cell** (the first code cell, ``# Setup. On Colab: ...``; every master has one, a
  test checks) and the **"Open in Colab" link** line of the first (markdown) cell are generated from
  :mod:`labkit.course.colab`, the one place naming the course's repository. A release rewrites
  them in the masters too (and nothing else there); ``--check`` lists a master whose setup
  cell or link is out of step as stale.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

from labkit.course import colab, ipynb
from labkit.paths import ROOT

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
_MARK = re.compile(r"^(\s*)### (BEGIN|END) SOLUTION\s*$")


class ReleaseError(ValueError):
    """A master notebook is malformed; the message names the notebook, cell and line."""


@dataclass
class ReleaseResult:
    written: list[Path]
    stale: list[Path]


def cell_meta(cell) -> dict:
    """The cell's ``labkit`` metadata (``{}`` when it has none)."""
    return dict(cell.get("metadata", {}).get("labkit", {}))


def stub_solution(source: str, exercise: str | None, where: str) -> str:
    """Replace every solution region in ``source`` with a stub that raises ``NotImplementedError``."""
    out, inside, begin_line, indent = [], False, 0, ""
    for lineno, line in enumerate(source.splitlines(), start=1):
        m = _MARK.match(line)
        if m and m.group(2) == "BEGIN":
            if inside:
                raise ReleaseError(f"{where}, line {lineno}: {BEGIN} inside the region opened at line {begin_line}")
            if exercise is None:
                raise ReleaseError(f"{where}, line {lineno}: solution region in a cell with no "
                                   "'labkit.exercise' metadata (the stub must name its exercise)")
            inside, begin_line, indent = True, lineno, m.group(1)
            out.append(f'{indent}raise NotImplementedError("Exercise {exercise}: your code here")')
        elif m:
            if not inside:
                raise ReleaseError(f"{where}, line {lineno}: {END} without a matching {BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ReleaseError(f"{where}, line {begin_line}: {BEGIN} is never closed by {END}")
    return "\n".join(out)


def student_notebook(master: dict, name: str) -> dict:
    """The student version of one master notebook (a dict, or nbformat's node: the same type
    comes back; ``name`` is used in error messages)."""
    nb = copy.deepcopy(master)
    for index, cell in enumerate(nb["cells"]):
        where = f"{name}, cell {index}"
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
            has_region = any(_MARK.match(line) for line in cell["source"].splitlines())
            if has_region:
                cell["source"] = stub_solution(cell["source"], cell_meta(cell).get("exercise"), where)
            elif "exercise" in cell_meta(cell):
                raise ReleaseError(f"{where}: has 'labkit.exercise' metadata but no {BEGIN} region")
        elif BEGIN in cell["source"] or END in cell["source"]:
            raise ReleaseError(f"{where}: solution markers in a {cell['cell_type']} cell")
        cell.get("metadata", {}).pop("execution", None)
    return nb


def _with_link(source: str, line: str) -> str:
    """``source`` (a notebook's first markdown cell) with its "Open in Colab" line set to ``line``.

    An existing link line is replaced; otherwise the line goes after the title (the first
    line), separated by blank lines.
    """
    lines = source.split("\n")
    for i, old in enumerate(lines):
        if old.startswith(colab.LINK_MARK):
            lines[i] = line
            return "\n".join(lines)
    rest = lines[1:]
    while rest and not rest[0].strip():
        rest = rest[1:]
    return "\n".join([lines[0], "", line, "", *rest]) if rest else "\n".join([lines[0], "", line])


def sync_colab(master: dict, name: str) -> bool:
    """Set ``master``'s setup cell and "Open in Colab" link from :mod:`labkit.course.colab`, in place.

    Only those two change: the first code cell, when it starts with ``# Setup. On Colab``, and
    one line of the first cell, when it is markdown (the title cell). Returns whether anything
    changed.
    """
    changed = False
    cells = master["cells"]
    if cells and cells[0]["cell_type"] == "markdown":
        linked = _with_link(cells[0]["source"], colab.link_line(name))
        if linked != cells[0]["source"]:
            cells[0]["source"], changed = linked, True
    code = next((c for c in cells if c["cell_type"] == "code"), None)
    if code is not None and code["source"].startswith(colab.SETUP_MARK):
        setup = colab.setup_cell_source()
        if code["source"] != setup:
            code["source"], changed = setup, True
    return changed


def master_paths(src: Path) -> list[Path]:
    return sorted(p for p in src.glob("*.ipynb") if not p.name.startswith("."))


def release(src: str | Path = ROOT / "solutions", dst: str | Path = ROOT / "notebooks", *,
            check: bool = False) -> ReleaseResult:
    """Release every master in ``src`` to ``dst``; with ``check``, write nothing and list stale files.

    A file in ``dst`` is stale when it differs from a fresh release, is missing, or has no
    master any more; a master is stale when its setup cell or "Open in Colab" link is out of
    step with :mod:`labkit.course.colab` (a release rewrites those two in the master).
    """
    src, dst = Path(src), Path(dst)
    written, stale = [], []
    expected = set()
    for path in master_paths(src):
        try:
            master = ipynb.reads(path.read_text(encoding="utf-8"), path.name)
        except ValueError as exc:  # not JSON, or not nbformat 4
            raise ReleaseError(f"{path.name}: {exc}") from exc
        if sync_colab(master, path.name):
            if check:
                stale.append(path)
            else:
                path.write_text(ipynb.writes(master) + "\n", encoding="utf-8")
                written.append(path)
        text = ipynb.writes(student_notebook(master, path.name)) + "\n"
        target = dst / path.name
        expected.add(target.name)
        if check:
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                stale.append(target)
        else:
            dst.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            written.append(target)
    orphans = [p for p in dst.glob("*.ipynb") if p.name not in expected]
    if check:
        stale.extend(orphans)
    else:
        for p in orphans:
            p.unlink()
    return ReleaseResult(written, stale)
