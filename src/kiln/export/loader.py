"""Load a package, verified, into a ready torch module or onnxruntime session.

Every file is hash-checked against the manifest (the store's database, or a directory's ``manifest.json``) as it
is read, and judged by its bytes: a pickle or a zip archive is refused under any name, and nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, IntegrityError, NotFoundError
from ..store import ModelVersion, Store
from ..store.blobs import Blob, read_verified
from ..store.content import check_package_file, read_head
from ..store.manifest import FORMAT, MANIFEST, read_manifest
from .factory import load_weights
from .onnx_graph import make_session
from .package import ONNX, SPEC, WEIGHTS
from .register import as_store
from .safetensors_io import read_state_dict

__all__ = ["LoadedModel", "load", "load_package"]

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
) -> LoadedModel:
    """Load ``reference`` (``"digits@production"`` from a store, or a package directory given as a Path).

    A string is always a store reference, never a path. ``runtime="auto"`` picks torch when the package can
    rebuild the module, else onnxruntime.

    Example:
        >>> loaded = load_package("digits@production", store=".kiln")
        >>> loaded.runtime, loaded.signature["inputs"][0]["shape"]
        ('torch', [None, 64])
    """
    if runtime not in ("auto", "torch", "onnx"):
        raise ConfigError(f"runtime must be 'auto', 'torch' or 'onnx'; got {runtime!r}.")
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
    chosen = runtime if runtime != "auto" else ("torch" if spec.get("module") else "onnx")
    if chosen == "torch":
        if not spec.get("module"):
            raise NotFoundError(
                f"{files.label} cannot be rebuilt by torch ({spec.get('torch_runtime')}); load it "
                "with runtime='onnx', or register it again with factory= and config=."
            )
        weights = files.read(WEIGHTS)
        module = load_weights(spec["module"], spec["config"], read_state_dict(weights, label=f"{files.label} weights"))
        return LoadedModel("torch", module, spec, version)
    if not files.has(ONNX):
        raise NotFoundError(
            f"{files.label} has no ONNX graph ({spec.get('onnx', {}).get('skipped')}); load it with runtime='torch'."
        )
    return LoadedModel("onnx", make_session(bytes(files.read(ONNX))), spec, version)


def load(
    reference: str | os.PathLike[str],
    *,
    store: Store | str | os.PathLike[str] | None = None,
    runtime: Runtime = "auto",
) -> Any:
    """A ready model for ``reference``: a ``torch.nn.Module`` in eval mode, or an ``onnxruntime.InferenceSession``.

    Example:
        >>> module = kiln.export.load("digits@production", store=".kiln", runtime="torch")
        >>> module(torch.rand(4, 64)).argmax(-1)
    """
    return load_package(reference, store=store, runtime=runtime).model
