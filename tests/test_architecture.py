"""The module map of docs/architecture.md, checked: no import circle, imports point one way.

Every import in `app/` counts, at module level and inside functions alike: an import moved into a
function still runs, and a circle held together that way breaks as soon as someone moves it back.
"""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(APP.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in APP.rglob("*.py")}


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = importer.split(".")
    if not MODULES[importer].name == "__init__.py":
        package = package[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """Imports under `if TYPE_CHECKING:` never run: annotations may name each other's classes."""
    skipped: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skipped.update(child for stmt in node.body for child in ast.walk(stmt))
    return skipped


def _imports(name: str) -> set[str]:
    """The app modules `name` imports (`from app import create_app` names the package itself)."""
    found: set[str] = set()
    tree = ast.parse(MODULES[name].read_text())
    skipped = _type_checking_only(tree)
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, node)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_sees_a_circle_held_together_by_function_level_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert "app.payments.capture" in GRAPH["app.jobs"]  # the walker reads imports at every level


def test_no_import_circle_in_app():
    assert _cycles(GRAPH) == []


def test_only_the_entry_points_use_the_app_factory():
    """`app/__init__.py` wires everything together; nothing inside the package reaches back to it."""
    assert [name for name, imports in GRAPH.items() if "app" in imports] == []


def test_the_domain_knows_nothing_of_http_or_of_the_edges():
    edges = ("app.errors", "app.storefront", "app.dashboard", "app.webhooks", "app.presenters", "flask.request")
    for name, imports in GRAPH.items():
        if name.startswith("app.payments"):
            assert not [i for i in imports if i.startswith(edges)], name
    for name in MODULES:
        if name.startswith("app.payments"):
            assert "from flask import request" not in MODULES[name].read_text(), name


def test_rq_is_reached_through_its_public_api_only():
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rq"):
                assert not any(alias.name.startswith("_") for alias in node.names), name
                assert node.module != "rq.scripts", name
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                if isinstance(base, ast.Name) and base.id in {"job", "old", "queue", "captures", "worker", "scheduler"}:
                    raise AssertionError(f"{name}: private RQ attribute {base.id}.{node.attr}")
