"""Forge model packages as an attacker would: edit spec.json, recompute manifest.json so integrity checks pass."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kiln.export import save_package
from kiln.store.blobs import hash_file
from kiln.store.manifest import MANIFEST, dump_manifest

EXAMPLE = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))


def genuine(directory: Path, *, onnx: bool) -> Path:
    """A real package of a small Sequential (kiln's own factory), with or without its ONNX graph."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    return save_package(net, directory, example_input=EXAMPLE, onnx=onnx)


def reseal(directory: Path) -> None:
    """Recompute manifest.json from the files as they are now (what an attacker with write access does)."""
    blobs = {p.name: hash_file(p) for p in directory.iterdir() if p.name != MANIFEST}
    (directory / MANIFEST).write_bytes(dump_manifest(blobs))


def set_factory(directory: Path, module: str, config: dict[str, Any]) -> Path:
    spec = json.loads((directory / "spec.json").read_text())
    spec["module"], spec["config"] = module, config
    (directory / "spec.json").write_text(json.dumps(spec))
    reseal(directory)
    return directory


def marker_module(root: Path, name: str, marker: Path) -> Path:
    """A module on ``root`` (put it on sys.path) whose import alone writes ``marker``, with a callable factory."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.py").write_text(
        textwrap.dedent(f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text("imported")

        def factory(**config):
            Path({str(marker)!r}).write_text("called")
            import torch
            return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        """)
    )
    return root


def forget(name: str) -> None:
    """Drop a test module from sys.modules so a later import would run its code again."""
    sys.modules.pop(name, None)
