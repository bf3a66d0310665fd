"""kiln's imports point down the layers of docs/ARCHITECTURE.md, and no modules import each other in a circle.

Every import counts, also those under ``TYPE_CHECKING`` and inside functions: a lazy import that points up still
couples the layers (and breaks the day someone moves it to the top). Run this file as a script to print the
package-level graph.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lower number = lower layer. A module may import its own layer (without circles) and any layer below.
LAYERS: dict[str, int] = {
    "kiln": 0, "kiln.errors": 0, "kiln._atomic": 0,
    "kiln.distributed": 1,
    "kiln.data": 2, "kiln.kernels": 2, "kiln.store": 2,
    "kiln._tokens": 2, "kiln._wav": 2,  # data's torch-free tokenizer and WAV decoder, shared with the server
    "kiln.train": 3, "kiln.export": 3,
    "kiln.serve": 4,
    "kiln.ui": 5, "kiln.jobs": 5, "kiln.tune": 5,
    "kiln.cli": 6,
}  # fmt: skip

# Upward edges that exist on purpose, each with the reason and when it goes.
ALLOWED_UP: dict[tuple[str, str], str] = {
    ("kiln.store.store", "kiln.export"): "Store.load, deprecated in 0.2 (use kiln.export.load), removed in 0.3",
}

# Modules that never import torch, not even lazily: the store holds bytes, hashes and rows, and the trust rules and
# the declared preprocessing (with the tokenizer and WAV decoder it shares with kiln.data) are used by the server's
# ONNX path, which starts without torch (tests/store/test_schema.py checks that at run time).
TORCH_FREE = ("kiln.store", "kiln.export.trust", "kiln.export.preprocess", "kiln._tokens", "kiln._wav")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "kiln").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _package(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The kiln modules ``name`` imports anywhere in its source (ancestor packages of ``name`` excluded)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package(name, path).split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            submodules = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in known]
            targets = submodules if len(submodules) == len(node.names) else [source, *submodules]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import kiln.store.blobs.x` -> the deepest known module
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def layer_of(module: str) -> tuple[str, int]:
    parts = module.split(".")
    for size in range(len(parts), 0, -1):
        prefix = ".".join(parts[:size])
        if prefix in LAYERS:
            return prefix, LAYERS[prefix]
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS (and to docs/ARCHITECTURE.md)")


def upward(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in sorted(edges.items()):
        for target in sorted(targets):
            (source_layer, low), (target_layer, high) = layer_of(source), layer_of(target)
            if high > low and (source, target) not in ALLOWED_UP:
                bad.append(f"{source} ({source_layer}, layer {low}) imports {target} ({target_layer}, layer {high})")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one node (Tarjan), allowed upward edges left out."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if (node, target) in ALLOWED_UP:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            if component:
                found.append(sorted([*component, node]))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def package_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Layer package -> the layer packages it imports (``kiln.store`` -> ``kiln.errors``, ...)."""
    packages: dict[str, set[str]] = {}
    for source, targets in edges.items():
        mine = layer_of(source)[0]
        packages.setdefault(mine, set())
        for target in targets:
            theirs = layer_of(target)[0]
            if theirs != mine and (source, target) not in ALLOWED_UP:
                packages[mine].add(theirs)
    return packages


def test_the_graph_sees_every_import_form() -> None:
    edges = graph()
    assert {"kiln.train.callbacks", "kiln.train.loop"} <= edges["kiln.train.model"]  # top-level relative
    assert "kiln.train.tracking" in edges["kiln.train.model"]  # inside Model.fit
    assert "kiln.train.state" in edges["kiln.train.callbacks"]  # under TYPE_CHECKING
    assert "kiln.export" in edges["kiln.store.store"]  # a lazy upward import (allowed, listed)


def test_imports_point_down_the_layers() -> None:
    assert upward(graph()) == []


def test_no_module_circles() -> None:
    assert cycles(graph()) == []


def test_no_package_circles() -> None:
    assert cycles(package_graph(graph())) == []


def test_only_the_model_imports_model_py() -> None:
    """Callbacks type against kiln.train.state.TrainState, the narrow view of the training state."""
    importers = sorted(name for name, targets in graph().items() if "kiln.train.model" in targets)
    assert importers == ["kiln.cli"], importers


def test_the_torch_free_modules_import_no_torch() -> None:
    found = modules()
    for name, path in found.items():
        if name.startswith(TORCH_FREE):
            tree = ast.parse(path.read_text())
            names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level]
            assert not any(n == "torch" or n.startswith("torch.") for n in names), f"{name} imports torch"


def test_the_servers_onnx_path_starts_without_torch() -> None:
    """What a worker imports to serve an ONNX graph (trust rules and graph checks included) pulls in no torch."""
    code = "import sys, kiln.serve.app, kiln.export.trust, kiln.store.onnx_check; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "False"


def test_the_command_line_parser_imports_no_torch() -> None:
    """`kiln --help` stays instant: building every verb's parser (the subsystems' commands modules included) imports
    neither torch nor Optuna; handlers import what they need when they run."""
    code = "import sys, kiln.cli; kiln.cli.build_parser(); print(sorted({'torch', 'optuna'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_allowed_upward_edges_still_exist() -> None:
    """An allowance whose import is gone must be removed, so the list never hides a new one."""
    edges = graph()
    assert [edge for edge in ALLOWED_UP if edge[1] not in edges.get(edge[0], set())] == []


if __name__ == "__main__":
    packages = package_graph(graph())
    for name in sorted(packages, key=lambda p: (LAYERS[p], p)):
        print(f"{LAYERS[name]} {name:18} -> {', '.join(sorted(packages[name])) or '-'}")
    print("upward:", upward(graph()) or "none")
    print("cycles:", cycles(graph()) or "none")
