"""The model package: what a registered version holds, and how it is written.

Files (no pickle anywhere):

    weights.safetensors   the state_dict
    model.onnx            the graph with a dynamic batch dimension, when the module exports and passes parity
    spec.json             {"module": "pkg.mod:factory", "config": {...}, "signature": {...}, "preprocessing": {...},
                           "onnx": {...}, "torch": "2.x", ...}
    manifest.json         SHA-256 and size of every other file
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from .. import __version__
from .._atomic import fsync_directory
from ..errors import ConfigError
from ..store.blobs import Blob
from ..store.manifest import FORMAT, MANIFEST, dump_manifest
from . import sequential
from .factory import check_rebuild, factory_path, resolve_config
from .onnx_graph import OnnxGraph, export_onnx
from .preprocess import parse_preprocessing
from .safetensors_io import write_state_dict
from .signature import as_inputs, as_outputs, input_names, make_signature, output_names

__all__ = ["SPEC", "WEIGHTS", "Package", "build_package", "write_package"]

logger = logging.getLogger(__name__)

WEIGHTS, ONNX, SPEC = "weights.safetensors", "model.onnx", "spec.json"


class Sink(Protocol):
    """Where package files go: a store's blobs or a directory. ``open(name)`` gives a file; ``close`` its blob."""

    def open(self, name: str) -> Any: ...

    def close(self, name: str, handle: Any) -> Blob: ...


@dataclass(frozen=True)
class Package:
    """A package ready to be written: the module's weights, its ONNX graph and the spec."""

    state_dict: dict[str, torch.Tensor]
    onnx: OnnxGraph
    spec: dict[str, Any]

    @property
    def signature(self) -> dict[str, Any]:
        return dict(self.spec["signature"])


def _plain_json(value: Any, what: str) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{what} must be plain JSON (str, numbers, bools, lists, dicts): {error}.") from error
    return value


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _torch_spec(
    module: torch.nn.Module, factory: str | Callable[..., Any] | None, config: Mapping[str, Any] | None
) -> tuple[str | None, dict[str, Any], str | None]:
    """(factory path, config, None) when the module can be rebuilt, else (None, {}, why not)."""
    if factory is None and config is None and type(module) is torch.nn.Sequential:
        described = sequential.describe(module)
        if described is not None:
            return sequential.FACTORY, described, None
    path, kwargs = factory_path(factory, module), resolve_config(module, config)
    problem = check_rebuild(module, path, kwargs)
    if problem is None:
        if path.startswith("__main__:"):
            logger.warning(
                "factory %s lives in the running script: only that script can load this version with "
                "the torch runtime; move it into an importable module.",
                path,
            )
        return path, kwargs, None
    if factory is not None or config is not None:
        raise ConfigError(
            f"cannot rebuild the module from its factory: {problem}. Pass factory= and config= that "
            "build an identical module (same state_dict keys and shapes)."
        )
    return None, {}, problem


def build_package(
    module: torch.nn.Module,
    *,
    example_input: Any,
    factory: str | Callable[..., Any] | None = None,
    config: Mapping[str, Any] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    onnx: bool = True,
) -> Package:
    """Everything a package holds, computed from ``module`` and one batch of ``example_input``."""
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"expected a torch.nn.Module, got {type(module).__name__}.")
    steps = parse_preprocessing(_plain_json(dict(preprocessing or {}), "preprocessing"), error=ConfigError)
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    inputs = tuple(t.to(device) for t in as_inputs(example_input))
    names = input_names(module, len(inputs))
    with _eval_mode(module):
        with torch.inference_mode():
            outputs = as_outputs(module(*inputs))
        signature = make_signature(inputs, outputs, names)
        path, kwargs, no_torch = _torch_spec(module, factory, config)
        graph = (
            export_onnx(module, inputs, names, output_names(len(outputs)))
            if onnx
            else OnnxGraph(None, skipped="not requested (onnx=False)")
        )
    if path is None and graph.model is None:
        raise ConfigError(
            f"this module can be loaded neither by torch nor by onnxruntime: the factory cannot rebuild it "
            f"({no_torch}) and ONNX was skipped ({graph.skipped}). Pass factory='package.module:function' and "
            "config={...} that build it."
        )
    if steps is not None:  # a declared pipeline the server will apply: refuse it now if it does not fit the model
        steps.check_signature(signature, where="preprocessing", error=ConfigError)
    if path is None:
        logger.warning("packaging for onnxruntime only; the torch runtime cannot rebuild it: %s", no_torch)
    spec = {
        "format": FORMAT, "module": path, "config": kwargs, "torch_runtime": no_torch or "ok",
        "signature": signature, "preprocessing": _plain_json(dict(preprocessing or {}), "preprocessing") or None,
        "onnx": graph.spec(), "parameters": sum(p.numel() for p in module.parameters()),
        "torch": torch.__version__.split("+")[0], "kiln": __version__,
    }  # fmt: skip
    return Package(module.state_dict(), graph, spec)


def write_package(package: Package, sink: Sink) -> dict[str, Blob]:
    """Write every file of ``package`` into ``sink``; returns name -> blob, manifest last."""
    blobs: dict[str, Blob] = {}

    def put(name: str, fill: Callable[[Any], object]) -> None:
        handle = sink.open(name)
        fill(handle)
        blobs[name] = sink.close(name, handle)

    put(WEIGHTS, lambda handle: write_state_dict(handle, package.state_dict, metadata={"format": "pt"}))
    model = package.onnx.model
    if model is not None:
        put(ONNX, lambda handle: handle.write(memoryview(model), stable=True))
    spec = json.dumps(package.spec, indent=1, sort_keys=True).encode()
    put(SPEC, lambda handle: handle.write(memoryview(spec)))
    manifest = dump_manifest(blobs)
    put(MANIFEST, lambda handle: handle.write(memoryview(manifest)))
    return blobs


class _HashingFile:
    def __init__(self, path: Path) -> None:
        self.handle = open(path, "wb", buffering=0)  # noqa: SIM115 - closed by DirectorySink.close
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: memoryview, *, stable: bool = False) -> None:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.handle.write(view)
        self.size += len(view)


class DirectorySink:
    """Writes a package into a fresh directory, made visible atomically by :meth:`commit`."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.target = Path(directory)
        if self.target.exists():
            raise ConfigError(f"{self.target} already exists; choose a new directory for the package.")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))

    def open(self, name: str) -> _HashingFile:
        return _HashingFile(self.tmp / name)

    def close(self, name: str, handle: _HashingFile) -> Blob:
        os.fsync(handle.handle.fileno())
        handle.handle.close()
        return Blob(handle.digest.hexdigest(), handle.size)

    def commit(self) -> Path:
        fsync_directory(self.tmp)
        os.replace(self.tmp, self.target)
        fsync_directory(self.target.parent)
        return self.target

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
