"""Imports inside kiln.train point one way: only the Model imports model.py, and no modules import each other.

Every import counts, also those under ``TYPE_CHECKING`` and inside functions: a circle there still couples the
modules (and breaks the day someone moves the import to the top). Run this file as a script to print the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

TRAIN = Path(__file__).resolve().parents[2] / "src" / "kiln" / "train"
PACKAGE = "kiln.train"


def _targets(node: ast.Import | ast.ImportFrom) -> list[str]:
    """Fully qualified names an import statement in a module of kiln.train may load."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    parts = PACKAGE.split(".")
    base = ".".join(parts[: len(parts) - node.level + 1]) if node.level else ""
    module = ".".join(p for p in (base, node.module or "") if p)
    # `from . import loop` loads kiln.train.loop; `from .loop import FitLoop` loads kiln.train.loop.
    return [module, *(f"{module}.{alias.name}" for alias in node.names)]


def import_graph() -> dict[str, set[str]]:
    """Module name (``model``, ``loop``, ...) -> the kiln.train modules it imports anywhere in its source."""
    names = {path.stem for path in TRAIN.glob("*.py")} - {"__init__"}
    graph: dict[str, set[str]] = {}
    for name in sorted(names):
        tree = ast.parse((TRAIN / f"{name}.py").read_text(), filename=f"{name}.py")
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _targets(node):
                    prefix, _, last = target.rpartition(".")
                    if prefix == PACKAGE and last in names:
                        edges.add(last)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module, or a module importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_every_import_form():
    graph = import_graph()
    assert {"callbacks", "loop", "state"} <= graph["model"]  # top-level relative imports
    assert {"doctor", "tracking"} <= graph["model"]  # imports inside Model.fit
    assert "state" in graph["callbacks"]  # under TYPE_CHECKING


def test_only_the_model_imports_model_py():
    importers = sorted(name for name, edges in import_graph().items() if "model" in edges)
    assert importers == [], f"{importers} import kiln.train.model; type against kiln.train.state.TrainState instead"


def test_kiln_train_has_no_import_circle():
    assert cycles(import_graph()) == []


def test_the_state_protocol_sits_below_everything_it_describes():
    assert import_graph()["state"] <= {"precision"}


if __name__ == "__main__":
    graph = import_graph()
    for name, edges in graph.items():
        print(f"{name:12} -> {', '.join(sorted(edges)) or '-'}")
    print("importers of model.py:", sorted(name for name, edges in graph.items() if "model" in edges) or "none")
    print("cycles:", cycles(graph) or "none")
