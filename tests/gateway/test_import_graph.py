"""The services' import graph has no circle (issue 12): read with ``ast``, nothing is imported.

An edge ``a -> b`` is any ``import`` of ``b`` in ``a``, at any depth (inside a function, or
under ``if TYPE_CHECKING:``: mypy follows those too). A package's ``__init__`` imported only
because a submodule is (``gateway.x`` runs ``gateway/__init__.py`` first) is not an edge.
Run it as a script to print the gateway's edges and any circles.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "common", "classifier")
Graph = dict[str, set[str]]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(node: ast.AST, importer: str, is_package: bool, modules: Iterable[str]) -> Iterable[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: resolve against the importer's package
            package = importer.split(".") if is_package else importer.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, base] if base else package)
        for alias in node.names:
            # `from gateway import oip` imports the module gateway.oip, not a name of gateway/__init__.py
            submodule = f"{base}.{alias.name}"
            yield submodule if submodule in modules else base


def import_graph(packages: Iterable[str] = PACKAGES) -> Graph:
    """Edges between the modules of ``packages``, by module name."""
    files = {module_name(p): p for package in packages for p in (ROOT / package).rglob("*.py")}
    graph: Graph = {name: set() for name in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            for target in _targets(node, name, is_package, files):
                if target in files and target != name:
                    graph[name].add(target)
    return graph


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of everything ``path`` imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module)
    return found


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
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


def reachable(graph: Graph, start: str) -> set[str]:
    """``start`` and every module it imports, directly or not."""
    seen = {start}
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_circle_in_the_services() -> None:
    graph = import_graph()
    assert {"gateway.errors", "gateway.service", "common.contract"} <= graph.keys()  # the walk found them
    assert cycles(graph) == []


def test_error_types_render_nothing() -> None:
    """errors.py holds exception types only: rendering lives with the middleware."""
    assert import_graph()["gateway.errors"] == set()
    assert not {"aiohttp", "aiohttp.web", "aiohttp_jinja2", "jinja2"} & third_party_imports(
        ROOT / "gateway" / "errors.py"
    )


def test_the_prediction_service_knows_no_http() -> None:
    """Predictor takes plain values: nothing it imports, directly or not, imports aiohttp."""
    graph = import_graph()
    service = reachable(graph, "gateway.service")
    assert "gateway.uploads" not in service  # the multipart reader stays with the views
    http = {
        module
        for module in service
        if any(name.split(".")[0] == "aiohttp" for name in third_party_imports(ROOT / _path_of(module)))
    }
    assert http == set()


def _path_of(module: str) -> Path:
    path = Path(*module.split("."))
    return path / "__init__.py" if (ROOT / path).is_dir() else path.with_suffix(".py")


if __name__ == "__main__":
    graph = import_graph()
    for source in sorted(graph):
        if source.startswith(sys.argv[1] if len(sys.argv) > 1 else "gateway"):
            for target in sorted(graph[source]):
                print(f"{source} -> {target}")
    print("cycles:", cycles(graph) or "none")
