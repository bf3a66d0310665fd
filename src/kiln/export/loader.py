"""Load a package, verified, into a ready torch module or onnxruntime session.

Every file is hash-checked against the manifest (the store's database, or a directory's ``manifest.json``) as it
is read, and judged by its bytes: a pickle or a zip archive is refused under any name, and nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, IntegrityError, NotFoundError
from ..store import ModelVersion, Store
from ..store.blobs import Blob, read_verified
from ..store.content import check_package_file, read_head
from ..store.manifest import FORMAT, MANIFEST, read_manifest
from ..store.onnx_check import check_onnx
from .factory import load_weights
from .onnx_graph import make_session
from .package import ONNX, SPEC, WEIGHTS
from .register import as_store
from .safetensors_io import read_state_dict
from .trust import check_factory, check_trust, require_trusted, trusted_by

__all__ = ["LoadedModel", "load", "load_package"]

logger = logging.getLogger(__name__)

Runtime = Literal["auto", "torch", "onnx"]


@dataclass(frozen=True)
class LoadedModel:
    """A loaded package: the ready ``model`` (module or session) with its signature and preprocessing."""

    runtime: Literal["torch", "onnx"]
    model: Any
    spec: dict[str, Any]
    version: ModelVersion | None = None

    @property
    def signature(self) -> dict[str, Any]:
        return dict(self.spec["signature"])

    @property
    def preprocessing(self) -> dict[str, Any] | None:
        return self.spec.get("preprocessing")


class _Directory:
    """A package directory: every file judged by content and listed in its manifest before anything is read."""

    def __init__(self, root: Path) -> None:
        self.root, self.label = root, str(root)
        if not (root / MANIFEST).is_file():
            raise IntegrityError(f"{root} is not a kiln package: it has no {MANIFEST}.")
        present: set[str] = set()
        for path in root.iterdir():
            if path.is_symlink() or not path.is_file():
                raise IntegrityError(
                    f"package {root}: {path.name!r} is not a regular file (links and folders are refused)."
                )
            check_package_file(path.name, *read_head(path))
            present.add(path.name)
        self.files = read_manifest((root / MANIFEST).read_bytes(), where=self.label)
        unlisted, missing = present - set(self.files) - {MANIFEST}, set(self.files) - present
        if unlisted or missing:
            raise IntegrityError(
                f"package {root}: files not in {MANIFEST}: {sorted(unlisted)}; listed but missing: "
                f"{sorted(missing)}. Export the package again."
            )

    def has(self, name: str) -> bool:
        return name in self.files

    def read(self, name: str) -> memoryview:
        blob: Blob = self.files[name]
        return read_verified(self.root / name, blob, label=f"package {self.root} file {name!r}")


class _Stored:
    def __init__(self, store: Store, version: ModelVersion) -> None:
        self.store, self.version, self.label = store, version, version.reference

    def has(self, name: str) -> bool:
        return name in self.version.files

    def read(self, name: str) -> memoryview:
        return self.store.read(self.version, name)


def _spec(files: _Directory | _Stored) -> dict[str, Any]:
    try:
        spec = json.loads(bytes(files.read(SPEC)))
        if not isinstance(spec, dict) or spec.get("format") != FORMAT or not isinstance(spec.get("config"), dict):
            raise ValueError(f"expected a {FORMAT} spec with a config object")
    except (ValueError, KeyError) as error:
        raise IntegrityError(f"{files.label}: {SPEC} is malformed ({error}).") from error
    return spec


def load_package(
    reference: str | os.PathLike[str],
    *,
    store: Store | str | os.PathLike[str] | None = None,
    runtime: Runtime = "auto",
    trust: Sequence[str] | None = None,
) -> LoadedModel:
    """Load ``reference`` (``"digits@production"`` from a store, or a package directory given as a Path).

    A string is always a store reference, never a path. The package's factory is imported only when it is trusted
    (kiln's own, a ``kiln.factories`` entry point, or a module named in ``trust``; see :mod:`kiln.export.trust`).
    ``runtime="auto"`` picks torch when the package has a trusted factory, else onnxruntime; ``runtime="torch"``
    with an untrusted factory raises TrustError, saying how to trust it.

    Example:
        >>> loaded = load_package("digits@production", store=".kiln", trust=["mynets"])
        >>> loaded.runtime, loaded.signature["inputs"][0]["shape"]
        ('torch', [None, 64])
    """
    if runtime not in ("auto", "torch", "onnx"):
        raise ConfigError(f"runtime must be 'auto', 'torch' or 'onnx'; got {runtime!r}.")
    trusted = check_trust(trust)
    version: ModelVersion | None = None
    if isinstance(reference, str):
        opened = as_store(store, create=False)
        version = opened.version(reference)
        files: _Directory | _Stored = _Stored(opened, version)
    elif isinstance(reference, os.PathLike):
        files = _Directory(Path(reference))
    else:
        raise ConfigError(f"load takes a reference string ('digits@3') or a package Path; got {type(reference)}.")
    spec = _spec(files)
    factory = spec.get("module")
    if factory is not None:
        check_factory(factory, label=files.label)
    chosen = runtime if runtime != "auto" else _auto_runtime(files, factory, trusted)
    if chosen == "torch":
        if not factory:
            raise NotFoundError(
                f"{files.label} cannot be rebuilt by torch ({spec.get('torch_runtime')}); load it "
                "with runtime='onnx', or register it again with factory= and config=."
            )
        require_trusted(factory, trusted, label=files.label)  # before a byte of weights is read
        state = read_state_dict(files.read(WEIGHTS), label=f"{files.label} weights")
        module = load_weights(factory, spec["config"], state, trust=trusted, label=files.label)
        return LoadedModel("torch", module, spec, version)
    if not files.has(ONNX):
        raise NotFoundError(f"{files.label} has no ONNX graph ({_skipped(spec)}); load it with runtime='torch'.")
    graph = bytes(files.read(ONNX))
    check_onnx(graph, label=files.label, trust=trusted)
    try:
        session = make_session(graph)
    except Exception as error:  # onnxruntime's own exception types: an invalid or unsupported graph
        message = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise IntegrityError(f"{files.label}: onnxruntime cannot load model.onnx ({message}).") from error
    return LoadedModel("onnx", session, spec, version)


def _skipped(spec: dict[str, Any]) -> Any:
    onnx = spec.get("onnx")
    return onnx.get("skipped") if isinstance(onnx, dict) else None


def _auto_runtime(files: _Directory | _Stored, factory: str | None, trust: Sequence[str]) -> Literal["torch", "onnx"]:
    """torch for a trusted factory; ONNX when the factory is untrusted and a graph is there (said once, logged)."""
    if not factory:
        return "onnx"
    if trusted_by(factory, trust) is not None:
        return "torch"
    if files.has(ONNX):
        logger.info(
            "%s: its factory %r is not trusted here, so it is loaded with onnxruntime (pass trust=[...] to rebuild "
            "it with torch)", files.label, factory,
        )  # fmt: skip
        return "onnx"
    require_trusted(factory, trust, label=files.label)  # raises, with the ways to trust it
    raise AssertionError("unreachable")


def load(
    reference: str | os.PathLike[str],
    *,
    store: Store | str | os.PathLike[str] | None = None,
    runtime: Runtime = "auto",
    trust: Sequence[str] | None = None,
) -> Any:
    """A ready model for ``reference``: a ``torch.nn.Module`` in eval mode, or an ``onnxruntime.InferenceSession``.

    ``trust`` names the modules whose factories may be imported to rebuild the module (see :func:`load_package`).

    Example:
        >>> module = kiln.export.load("digits@production", store=".kiln", runtime="torch", trust=["mynets"])
        >>> module(torch.rand(4, 64)).argmax(-1)
    """
    return load_package(reference, store=store, runtime=runtime, trust=trust).model
