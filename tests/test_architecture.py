"""The layout holds: no import circles among the bridge's modules, and SQL only in ``db/``.

The import graph is read from the source (ast), not from what Python happened to import:
every ``import`` counts, at module level, inside functions and under ``TYPE_CHECKING``
alike, since a circle of type-only imports is still a circle of dependencies. An edge goes
to the module named (``from .x import y`` to ``x``, or to ``x.y`` when that is a module);
the implicit import of a package's ``__init__`` on the way to a submodule is no edge, or
every package that wires its submodules would be a circle.

``python -m tests.test_architecture`` prints the graph (as in docs/architecture.md).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bridge"

# A statement, not a word in a sentence: the verb with its clause, in capitals.
SQL = re.compile(
    r"\bSELECT\b[\s\S]*\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b"
    r"|\bSELECT\s+(pg_|COALESCE|MAX|COUNT|1\b)"
)


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    if f"{target}.{alias.name}" in modules:
                        graph[name].add(f"{target}.{alias.name}")
                    elif target in modules:
                        graph[name].add(target)
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def sql_literals(path: Path) -> list[tuple[int, str]]:
    """String literals (f-string parts included) that read as SQL statements."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
        if is_text and SQL.search(node.value):
            out.append((node.lineno, node.value[:80]))
    return out


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert "bridge.chat.service" in graph and graph["bridge.api.routes_chat"]
    assert cycles(graph) == []


def test_the_graph_sees_function_level_and_type_only_imports() -> None:
    graph = import_graph()
    # app.py imports the sides inside build_app; messaging names ChatService for types only.
    assert "bridge.realtime" in graph["bridge.app"]
    assert "bridge.chat.service" in graph["bridge.api.messaging"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_api_and_realtime_hold_no_sql() -> None:
    found = {
        str(path.relative_to(ROOT)): hits
        for side in ("api", "realtime", "chat")
        for path in sorted((PACKAGE / side).rglob("*.py"))
        if (hits := sql_literals(path))
    }
    assert found == {}


def test_sql_lives_in_db_only() -> None:
    found = {
        str(path.relative_to(ROOT)): hits
        for path in sorted(PACKAGE.rglob("*.py"))
        if PACKAGE / "db" not in path.parents and (hits := sql_literals(path))
    }
    assert found == {}


def test_the_sql_check_catches_sql() -> None:
    assert SQL.search("SELECT room_id FROM room_member WHERE mxid=$1")
    assert SQL.search("INSERT INTO published_mark (room_id, seq) VALUES ($1, $2)")
    assert SQL.search("UPDATE conversation SET last_preview=$3")
    assert SQL.search("DELETE FROM cleared_history WHERE room_id=$1")
    assert SQL.search("SELECT pg_advisory_lock($1)")
    assert not SQL.search("Select the rooms from the index, then update the list.")


def render(graph: dict[str, set[str]]) -> str:
    """The graph between the bridge's packages (top-level modules stand for themselves)."""

    def side(module: str) -> str:
        parts = module.split(".")
        return ".".join(parts[:2])

    edges: dict[str, set[str]] = {}
    for module, targets in graph.items():
        for target in targets:
            a, b = side(module), side(target)
            if a != b:
                edges.setdefault(a, set()).add(b)
    return "\n".join(f"{a} -> {', '.join(sorted(bs))}" for a, bs in sorted(edges.items()))


if __name__ == "__main__":
    sys.stdout.write(render(import_graph()) + "\n")
