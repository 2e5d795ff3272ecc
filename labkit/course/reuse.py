"""What ``labkit grade`` reads in a submission's code before running it (AST, never executed).

* :func:`find_reuse`: an exercise cell that uses a labkit object implementing that exercise
  (named in ``SOLUTIONS`` at the end of ``labkit/checks/nbNN.py``), imported directly, through a
  re-export, an alias or a name bound to it in another cell: ``from labkit.attention.reference
  import reference_decode`` then ``def naive_decode(q, k, v, scale=None): return
  reference_decode(q, k, v, scale=scale).to(q.dtype)``. Any use inside the exercise cell counts,
  as does anything from ``labkit.course.solutions`` (it loads the masters' solutions). The
  exercise gets status ``reused-solution`` and no points.
* :func:`find_suspicious`: code in any cell of the student's that reaches into what grades it:
  ``labkit.checks``, ``sys.modules``, ``builtins``, ``importlib``, the IPython shell, ``exec``/
  ``eval``, ``setattr``, a module's attributes rebound (``labkit.x.f = ...``, ``np.isfinite =
  ...``), files of modules (``__file__``), shell escapes. Passing checks of such a notebook are
  held at 0 points with status ``suspicious`` until an instructor has read the lines.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    cell: int  # the cell's number in the student's own notebook (1 = the first cell)
    line: int  # line within the cell (1 = the first)
    text: str  # the line, stripped
    why: str

    def describe(self) -> str:
        return f"cell {self.cell}, line {self.line}: `{self.text}` ({self.why})"


SAFE_MAGICS = {"matplotlib", "time", "timeit", "%time", "%timeit", "load_ext", "autoreload", "config", "pip"}


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


def resolve(name: str):
    """The object a dotted labkit name refers to (imported in the grader's process), or _MISSING."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except Exception:  # noqa: BLE001 - not a module (or it fails to import): try a shorter prefix
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, _MISSING)
            if obj is _MISSING:
                return _MISSING
        return obj
    return _MISSING


def solution_objects(entries) -> list[tuple[str, object]]:
    """``("labkit.m:obj" | "labkit.m", ...)`` as ``(dotted name, object)`` pairs (unresolvable ones kept by name)."""
    out = []
    for entry in entries:
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


SUSPICIOUS_NAMES = {
    "sys.modules": "reaches into sys.modules", "sys.meta_path": "changes how modules are imported",
    "sys.path_hooks": "changes how modules are imported", "builtins": "reaches into builtins",
    "__builtins__": "reaches into builtins", "importlib": "imports modules by hand",
    "get_ipython": "reaches into the notebook's shell", "gc": "walks the interpreter's objects",
    "ctypes": "reaches into the interpreter's memory", "__import__": "imports modules by hand",
    "exec": "runs code built at run time", "eval": "runs code built at run time",
    "compile": "builds code at run time", "setattr": "rebinds attributes by name",
    "delattr": "deletes attributes by name", "subprocess": "starts other programs",
    "os.system": "starts other programs", "os.kill": "signals other processes", "os.chmod": "changes file permissions",
    "shutil.rmtree": "deletes folders", "os.environ": "reaches into the environment",
}
DUNDER_ATTRS = {"__file__": "touches a module's file", "__code__": "rewrites a function's code",
                "__globals__": "reaches into a function's globals", "__dict__": "rebinds attributes behind the names",
                "__class__": "rebinds an object's class", "__builtins__": "reaches into builtins"}


def find_suspicious(source: str, cell: int, aliases: dict[str, str]) -> list[Finding]:
    """Lines of a student's cell that reach into what grades it (see the module docstring)."""
    found: dict[int, Finding] = {}

    def flag(lineno: int, why: str) -> None:
        found.setdefault(lineno, Finding(cell, lineno, _line(source, lineno), why))

    for i, ln in enumerate(source.splitlines(), 1):
        s = ln.lstrip()
        if s.startswith("!") or (s.startswith("%") and s.lstrip("%").split(" ")[0] not in SAFE_MAGICS):
            flag(i, "a shell escape or magic")
    tree = parse(source)
    if tree is None:
        return sorted(found.values(), key=lambda f: f.line)
    local = dict(aliases)
    collect_aliases(tree, local)
    modules = {n for n, target in local.items() if "." not in n}  # names bound by imports
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            for n in names:
                if n.startswith("labkit.checks") or n == "labkit.checks":
                    flag(node.lineno, "imports the checks")
                root = n.split(".")[0]
                if root in SUSPICIOUS_NAMES or n in SUSPICIOUS_NAMES:
                    flag(node.lineno, SUSPICIOUS_NAMES.get(n) or SUSPICIOUS_NAMES[root])
        elif isinstance(node, ast.Name):
            if node.id in SUSPICIOUS_NAMES and node.id not in ("gc",):
                flag(node.lineno, SUSPICIOUS_NAMES[node.id])
            name = local.get(node.id, "")
            if name.startswith("labkit.checks"):
                flag(node.lineno, "uses the checks")
        elif isinstance(node, ast.Attribute):
            name = dotted(node, local) or ""
            if name.startswith("labkit.checks"):
                flag(node.lineno, "reaches into labkit.checks")
            for key, why in SUSPICIOUS_NAMES.items():
                if "." in key and (name == key or name.startswith(key + ".")):
                    flag(node.lineno, why)
            if node.attr in DUNDER_ATTRS:
                flag(node.lineno, DUNDER_ATTRS[node.attr])
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Attribute):
                        base = sub.value
                        while isinstance(base, ast.Attribute):
                            base = base.value
                        if isinstance(base, ast.Name) and (base.id in modules
                                                           or local.get(base.id, "").startswith("labkit")):
                            flag(node.lineno, f"rebinds {dotted(sub, local) or base.id + '.' + sub.attr}")
    return sorted(found.values(), key=lambda f: f.line)


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


__all__ = ["Finding", "collect_aliases", "find_reuse", "find_suspicious", "parse", "solution_objects"]
