"""Register a torch module in a store (or save it as a package directory) in one call."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..store import BlobWriter, ModelVersion, Store
from ..store.names import check_name
from .package import DirectorySink, build_package, write_package

__all__ = ["as_store", "register_module", "save_package"]


def as_store(store: Store | str | os.PathLike[str] | None, *, create: bool = True) -> Store:
    """``store`` itself, or the Store at that path (``None``: ``$KILN_HOME`` or ``./.kiln``)."""
    return store if isinstance(store, Store) else Store(store, create=create)


class _StoreSink:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.writers: dict[str, BlobWriter] = {}

    def open(self, name: str) -> BlobWriter:
        self.writers[name] = self.store.blobs.writer()
        return self.writers[name]

    def close(self, name: str, handle: BlobWriter) -> Any:
        return handle.finish()  # Store.register checks the content before the blob gets its address


def register_module(
    module: torch.nn.Module,
    name: str,
    *,
    store: Store | str | os.PathLike[str] | None = None,
    example_input: Any,
    factory: str | Callable[..., Any] | None = None,
    config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    run_id: str | None = None,
    data_fingerprint: str | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    description: str | None = None,
    tags: Mapping[str, str] | None = None,
    parent: str | None = None,
    onnx: bool = True,
) -> ModelVersion:
    """Package ``module`` (safetensors weights, ONNX graph, signature, spec) and publish it as the next version.

    ``example_input`` is one batch (e.g. ``x[:1]``); it fixes the signature and checks ONNX parity. ``factory`` /
    ``config`` rebuild the module for the torch runtime (default: the module's class called with ``config`` or
    its ``config`` attribute; ``nn.Sequential`` stacks of standard layers need neither). ``run_id``,
    ``data_fingerprint`` and ``parent`` (a reference such as ``"digits@2"``) record lineage.

    Example:
        >>> version = register_module(net, "digits", store=store, example_input=x[:1], metrics={"acc": 0.97},
        ...                           preprocessing={"scale": 1 / 16})
        >>> version.reference
        'digits@1'
    """
    check_name(name)  # before any work: a bad name must fail fast and touch nothing
    target = as_store(store)
    package = build_package(
        module, example_input=example_input, factory=factory, config=config, preprocessing=preprocessing, onnx=onnx
    )
    sink = _StoreSink(target)
    try:
        write_package(package, sink)
        return target.register(
            name,
            sink.writers,
            signature=package.signature,
            metrics=metrics,
            run_id=run_id,
            data_fingerprint=data_fingerprint,
            parent=parent,
            description=description,
            tags=tags,
        )
    except BaseException:
        for writer in sink.writers.values():
            if writer.blob is None:
                writer.abort()
            writer.release()
        raise


def save_package(
    module: torch.nn.Module,
    directory: str | os.PathLike[str],
    *,
    example_input: Any,
    factory: str | Callable[..., Any] | None = None,
    config: Mapping[str, Any] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    onnx: bool = True,
) -> Path:
    """Write a package into a new ``directory`` (atomically: it appears complete or not at all).

    Example:
        >>> save_package(net, "export/digits", example_input=x[:1])
        >>> kiln.export.load(Path("export/digits"))
    """
    package = build_package(
        module, example_input=example_input, factory=factory, config=config, preprocessing=preprocessing, onnx=onnx
    )
    sink = DirectorySink(directory)
    try:
        write_package(package, sink)
        return sink.commit()
    except BaseException:
        sink.abort()
        raise
