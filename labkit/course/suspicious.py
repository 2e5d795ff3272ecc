"""Code in a student's cells that reaches into what grades it (AST, never executed).

:func:`find_suspicious` flags, in any cell of the student's: ``labkit.checks``, ``sys.modules``,
``builtins`` (by name, through ``print.__self__``, or a builtin's name rebound on any object),
``importlib``, the IPython shell (``get_ipython``, ``set_custom_exc``), ``exec``/``eval``,
``setattr``, labkit's attributes looked up by name, a module's attributes rebound (``labkit.x.f
= ...``, ``np.isfinite = ...``), call watches turned off (``sys.setprofile``), other threads,
torch's operations intercepted, files of modules (``__file__``), shell escapes. Passing checks
of such a notebook are held at 0 points with status ``suspicious`` until an instructor has read
the lines. A scan cannot follow every alias: the checks and the grader defend themselves too.
"""

from __future__ import annotations

import ast

from labkit.course.reuse import Finding, _line, collect_aliases, dotted, parse

SAFE_MAGICS = {"matplotlib", "time", "timeit", "%time", "%timeit", "load_ext", "autoreload", "config", "pip"}

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
    "globals": "reaches into the notebook's namespace by name",
}
THREADS = "runs code in other threads or processes (a check watches only its own)"
for _module in ("threading", "_thread", "concurrent", "multiprocessing"):
    SUSPICIOUS_NAMES[_module] = THREADS
DUNDER_ATTRS = {"__file__": "touches a module's file", "__code__": "rewrites a function's code",
                "__globals__": "reaches into a function's globals", "__dict__": "rebinds attributes behind the names",
                "__class__": "rebinds an object's class", "__builtins__": "reaches into builtins"}
# Names that give themselves away whatever object they are reached through (an alias the scan can't
# follow, ``print.__self__`` for the builtins module): as attributes, imported names, or plain names.
UNWATCH = "turns off the checks' watch on the calls an answer makes"
INTERCEPT = "intercepts torch's operations (what a check reads from an answer)"
TELLING_NAMES = {
    "__self__": "reaches into a builtin's module (builtins)", "get_ipython": "reaches into the notebook's shell",
    "set_custom_exc": "hides errors from the grader", "showtraceback": "hides errors from the grader",
    "excepthook": "hides errors from the grader", "custom_exceptions": "hides errors from the grader",
    "setprofile": UNWATCH, "settrace": UNWATCH, "setprofile_all_threads": UNWATCH, "settrace_all_threads": UNWATCH,
    "_setprofileallthreads": UNWATCH, "_settraceallthreads": UNWATCH, "monitoring": UNWATCH,
    "__torch_function__": INTERCEPT, "__torch_dispatch__": INTERCEPT, "TorchFunctionMode": INTERCEPT,
    "TorchDispatchMode": INTERCEPT,
}
# Builtins the grader's and the checks' code call: a cell that binds one of these names, or sets it on
# any object (the builtins module, reached some way the scan can't name), changes what a check runs.
GRADER_BUILTINS = {"exec", "eval", "compile", "__import__", "getattr", "setattr", "delattr", "hasattr", "globals",
                   "locals", "vars", "isinstance", "issubclass", "dict", "print", "open", "super", "BaseException",
                   "Exception", "AssertionError", "NotImplementedError"}
BY_NAME = ("getattr", "hasattr", "setattr", "delattr", "vars", "dir")


def _labkit(node: ast.AST, aliases: dict[str, str]) -> bool:
    name = dotted(node, {"labkit": "labkit", **aliases}) or ""
    return name == "labkit" or name.startswith("labkit.")


def _head(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _bindings(node: ast.AST):
    """``(name, lineno)`` for each plain name ``node`` binds, and ``("." + attr, lineno)`` per attribute set."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        yield node.name, node.lineno
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
        for a in node.names:
            yield a.asname or a.name.split(".")[0], node.lineno
    elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete, ast.For, ast.With, ast.NamedExpr)):
        targets = (node.targets if isinstance(node, (ast.Assign, ast.Delete)) else
                   [i.optional_vars for i in node.items if i.optional_vars] if isinstance(node, ast.With) else
                   [node.target])
        for t in targets:
            for sub in ast.walk(t):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
                    yield sub.id, node.lineno
                elif isinstance(sub, ast.Attribute) and isinstance(sub.ctx, (ast.Store, ast.Del)):
                    yield "." + sub.attr, node.lineno


def _by_name(node: ast.Call, local: dict[str, str], modules: set[str], flag) -> None:
    """``getattr(labkit.x, ...)``, ``getattr(sys, "set" + "profile")``, ``getattr(m, "settrace")``..."""
    if not (isinstance(node.func, ast.Name) and node.func.id in BY_NAME and node.args):
        return
    if _labkit(node.args[0], local):
        flag(node.lineno, "looks up labkit's attributes by name")
    elif node.func.id == "vars" and _head(node.args[0]) in modules:
        flag(node.lineno, "reaches into a module's attributes")
    if len(node.args) > 1:
        key = node.args[1]
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            if key.value in TELLING_NAMES:
                flag(node.lineno, TELLING_NAMES[key.value])
            elif key.value in GRADER_BUILTINS or key.value in DUNDER_ATTRS:
                flag(node.lineno, f"looks up {key.value} by name")
        elif isinstance(node.args[0], ast.Name) and node.args[0].id in modules:
            flag(node.lineno, "looks up a module's attribute by a name computed at run time")


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
    for _ in range(2):  # and names bound to what they hold: ``la = np.linalg`` (then ``la.norm = ...``)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                if isinstance(node.value, ast.Attribute) and _head(node.value) in modules:
                    modules.add(node.targets[0].id)
    for node in ast.walk(tree):
        for name, lineno in _bindings(node):
            if name.lstrip(".") in GRADER_BUILTINS:
                flag(lineno, f"rebinds the builtin {name.lstrip('.')}" if name[0] != "." else
                     f"sets {name.lstrip('.')}, a builtin's name, on an object (builtins?)")
            elif name in TELLING_NAMES:
                flag(lineno, TELLING_NAMES[name])
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            for n in names:
                if n.startswith("labkit.checks") or n == "labkit.checks":
                    flag(node.lineno, "imports the checks")
                root = n.split(".")[0]
                if root in SUSPICIOUS_NAMES or n in SUSPICIOUS_NAMES:
                    flag(node.lineno, SUSPICIOUS_NAMES.get(n) or SUSPICIOUS_NAMES[root])
                if n.rsplit(".", 1)[-1] in TELLING_NAMES:
                    flag(node.lineno, TELLING_NAMES[n.rsplit(".", 1)[-1]])
        elif isinstance(node, ast.Name):
            if node.id in SUSPICIOUS_NAMES and node.id not in ("gc",):
                flag(node.lineno, SUSPICIOUS_NAMES[node.id])
            elif node.id in TELLING_NAMES:
                flag(node.lineno, TELLING_NAMES[node.id])
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
            elif node.attr in TELLING_NAMES:
                flag(node.lineno, TELLING_NAMES[node.attr])
        elif isinstance(node, ast.Call):
            _by_name(node, local, modules, flag)
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


__all__ = ["find_suspicious"]
