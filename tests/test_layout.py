"""The package's layout: no import cycle inside labkit.

The import graph is read statically (``ast``) from every module under ``labkit/``: an edge
A -> B for each ``import B`` / ``from B import x`` (and ``from A import sub`` when ``sub`` is a
module), at module level or inside a function alike, so a cycle cannot hide behind a lazy
import either. ``if TYPE_CHECKING:`` blocks are skipped (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "labkit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def labkit_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node outside ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """``{module: labkit modules it imports}``, relative imports resolved."""
    modules = labkit_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert "labkit.rope.fusion" in graph and "labkit.rope.reference" in graph["labkit.rope.fusion"]
    assert "labkit.attention.numba_bridge" in graph["labkit.attention.numba_fused"]


def test_no_import_cycle_inside_labkit():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _readme_layout_paths() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    paths = []
    for line in section.splitlines():
        if line.startswith("| `"):
            paths += [p.strip().strip("`") for p in line.split("|")[1].split(",")]
    return paths


def test_readme_layout_table_matches_the_tree():
    named = _readme_layout_paths()
    top = {p for p in named if "/" not in p.rstrip("/") and not (ROOT / "labkit" / p).exists()}
    inside = [p for p in named if p not in top]
    for p in top:
        assert (ROOT / p).exists(), f"README's layout names {p}, which is not in the tree"
    for p in inside:
        assert (PACKAGE / p).exists(), f"README's layout names labkit/{p}, which is not in the tree"
    actual = {p.name + "/" for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    actual |= {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    missing = sorted(actual - set(inside))
    assert not missing, f"labkit/ holds {missing}, which README's layout table does not name"


DATA_SUFFIXES = {".json", ".png", ".safetensors", ".txt"}  # records, plots, weights, corpus


def test_data_holds_only_what_the_course_reads():
    files = [p for p in (ROOT / "data").rglob("*") if p.is_file()]
    assert files, "data/ is empty"
    stray = sorted(str(p.relative_to(ROOT)) for p in files if p.suffix not in DATA_SUFFIXES)
    assert not stray, f"data/ holds logs, patches or other files the course does not read: {stray}"
    assert not [p for p in files if p.suffix in (".log", ".patch")]
