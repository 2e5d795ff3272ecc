"""What ``labkit grade`` reads in a submission's code before running it (AST, never executed).

* :func:`find_reuse`: an exercise cell that uses a labkit object implementing that exercise
  (named in ``SOLUTIONS`` at the end of ``labkit/checks/nbNN.py``), imported directly, through a
  re-export, an alias or a name bound to it in another cell: ``from labkit.attention.reference
  import reference_decode`` then ``def naive_decode(q, k, v, scale=None): return
  reference_decode(q, k, v, scale=scale).to(q.dtype)``. Any use inside the exercise cell counts,
  as does anything from ``labkit.course.solutions`` (it loads the masters' solutions). The
  exercise gets status ``reused-solution`` and no points.
* code that reaches into what grades it is found by :mod:`labkit.course.suspicious`.
"""

from __future__ import annotations

import ast
import importlib
import sys
import types
from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    cell: int  # the cell's number in the student's own notebook (1 = the first cell)
    line: int  # line within the cell (1 = the first)
    text: str  # the line, stripped
    why: str

    def describe(self) -> str:
        return f"cell {self.cell}, line {self.line}: `{self.text}` ({self.why})"


def parse(source: str) -> ast.Module | None:
    """The cell's AST, with IPython magics and shell escapes blanked; None when it does not parse."""
    lines = [("pass" + " " * max(0, len(ln) - 4)) if ln.lstrip().startswith(("%", "!")) else ln
             for ln in source.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def _line(source: str, lineno: int) -> str:
    lines = source.splitlines()
    return lines[lineno - 1].strip()[:160] if 0 < lineno <= len(lines) else ""


def dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``a.b.c`` for a Name/Attribute chain, its head resolved through ``aliases``."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    head = aliases.get(node.id)
    if head is None:
        return None
    return ".".join([head, *reversed(parts)])


def collect_aliases(tree: ast.Module, aliases: dict[str, str]) -> None:
    """Add what ``tree`` binds to labkit (imports, and plain ``name = labkit_thing``) to ``aliases``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
                else:
                    aliases[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                if a.name != "*":
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target = dotted(node.value, aliases)
            if target and target.startswith("labkit"):
                aliases[node.targets[0].id] = target


_MISSING = object()


def _attribute(obj, attr: str):
    if isinstance(obj, types.ModuleType):  # the module's own names; a lazy one only if it declares it
        found = vars(obj).get(attr, _MISSING)
        if found is _MISSING and attr in (vars(obj).get("__all__") or ()):
            found = getattr(obj, attr, _MISSING)
        return found
    return getattr(obj, attr, _MISSING)


def resolve(name: str):
    """The object a dotted labkit name refers to in the grader's process, or _MISSING.

    Never imports: the name comes from a student's notebook, and importing it would run, in the
    grader, whatever module of that name a run left on its path (or a module that acts when imported).
    Only modules of labkit's that the grader has already imported are looked in.
    """
    parts = name.split(".")
    if parts[0] != "labkit":
        return _MISSING
    for cut in range(len(parts), 0, -1):
        obj = sys.modules.get(".".join(parts[:cut]))
        if obj is None:
            continue
        try:
            for attr in parts[cut:]:
                obj = _attribute(obj, attr)
                if obj is _MISSING:
                    return _MISSING
        except KeyboardInterrupt:
            raise
        except BaseException:  # noqa: BLE001 - whatever a lookup raises (SystemExit included), it names nothing
            return _MISSING
        return obj
    return _MISSING


def solution_objects(entries) -> list[tuple[str, object]]:
    """``("labkit.m:obj" | "labkit.m", ...)`` as ``(dotted name, object)`` pairs (unresolvable ones kept by name)."""
    out = []
    for entry in entries:
        try:  # labkit's own SOLUTIONS names these modules, never a notebook
            importlib.import_module(entry.partition(":")[0])
        except Exception:  # noqa: BLE001 - kept by name
            pass
        name = entry.replace(":", ".")
        out.append((name, resolve(name)))
    return out


def _matches(name: str, targets: list[tuple[str, object]]) -> str | None:
    if name.startswith("labkit.course.solutions"):
        return "labkit.course.solutions (the masters' solutions)"
    obj = resolve(name)
    for target, tobj in targets:
        if name == target or name.startswith(target + "."):
            return target
        if obj is not _MISSING and tobj is not _MISSING:
            if obj is tobj:
                return target
            if isinstance(tobj, type(importlib)) and getattr(obj, "__module__", None) == tobj.__name__:
                return target
    return None


def find_reuse(source: str, cell: int, targets: list[tuple[str, object]], aliases: dict[str, str]) -> list[Finding]:
    """Uses, in an exercise cell's ``source``, of the labkit objects ``targets`` that implement it."""
    tree = parse(source)
    if tree is None:
        return []
    aliases = dict(aliases)
    collect_aliases(tree, aliases)
    found, seen = [], set()
    for node in ast.walk(tree):
        name = None
        if isinstance(node, (ast.Name, ast.Attribute)):
            name = dotted(node, aliases)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                hit = _matches(f"{node.module}.{a.name}", targets)
                if hit and node.lineno not in seen:
                    seen.add(node.lineno)
                    found.append(Finding(cell, node.lineno, _line(source, node.lineno), f"imports labkit's {hit}"))
            continue
        if not name or not name.startswith("labkit"):
            continue
        hit = _matches(name, targets)
        if hit and node.lineno not in seen:
            seen.add(node.lineno)
            found.append(Finding(cell, node.lineno, _line(source, node.lineno), f"uses labkit's {hit}"))
    return sorted(found, key=lambda f: f.line)


def exercise_names(source: str) -> set[str]:
    """The top-level names an exercise cell defines (functions, classes, assignments)."""
    tree = parse(source)
    names: set[str] = set()
    for node in tree.body if tree else []:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def defines_any(source: str, names: set[str]) -> bool:
    return bool(exercise_names(source) & names)


__all__ = ["Finding", "collect_aliases", "find_reuse", "parse", "solution_objects"]
