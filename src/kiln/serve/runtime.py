"""Runtimes: a loaded package behind one call, ``run(arrays) -> outputs``, numpy in and numpy out.

ONNX Runtime is the default on CPU whenever the package has an ONNX graph (1.2-7.7x faster than eager torch on
small models here); torch rebuilds the module from the package's spec and safetensors weights. Both use a fixed,
deliberately small number of intra-op threads: on a small box one thread per worker is far faster than letting
OpenMP threads spin against the HTTP loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, IntegrityError, NotFoundError
from ..export.preprocess import Preprocessing, parse_preprocessing
from ..export.trust import check_trust, env_trust
from ..store.manifest import FORMAT
from ..store.onnx_check import check_onnx
from .tensors import TensorSpec, specs_from_signature

__all__ = ["LoadedRuntime", "OnnxRunner", "TorchRunner", "load_runtime", "onnx_session", "set_threads"]

logger = logging.getLogger(__name__)


ONNX_FILE, SPEC_FILE = "model.onnx", "spec.json"  # file names of a kiln package (kiln.export.package)


def set_threads(threads: int) -> None:
    """Fix torch's intra-op threads for this process (only the torch runtime imports torch)."""
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set, or inter-op work already ran in this process
        torch.set_num_interop_threads(1)


def onnx_session(model: bytes, threads: int) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads, one inter-op thread and no spin-waiting:
    on a box shared with the HTTP loop, spinning threads steal the core that would parse the next requests."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


class OnnxRunner:
    """An onnxruntime session: inputs fed by name, outputs returned in signature order."""

    kind = "onnx"

    def setup_thread(self) -> None:
        """Nothing to do: the session has its thread settings."""

    def __init__(self, session: Any, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
        self.session = session
        self.input_names = [s.name for s in inputs]
        self.output_names = [s.name for s in outputs]

    def __call__(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        feed = dict(zip(self.input_names, arrays, strict=True))
        return list(self.session.run(self.output_names, feed))


class TorchRunner:
    """A torch module in eval mode under ``inference_mode``; numpy arrays shared with tensors, not copied."""

    kind = "torch"

    def __init__(self, module: Any, threads: int) -> None:
        import torch

        self.torch = torch
        self.module = module.eval()
        self.threads = threads

    def setup_thread(self) -> None:
        """Give the calling (inference) thread the worker's intra-op thread count."""
        set_threads(self.threads)

    def __call__(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            result = self.module(*(torch.from_numpy(a) for a in arrays))
        outputs = result if isinstance(result, tuple | list) else (result,)
        return [np.ascontiguousarray(out.detach().cpu().numpy()) for out in outputs]


@dataclass(frozen=True)
class LoadedRuntime:
    """What a worker serves: the runner, its signature as TensorSpecs and where it came from."""

    name: str
    version: str
    reference: str
    run: OnnxRunner | TorchRunner
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    preprocessing: dict[str, Any] | None
    load_seconds: float
    steps: Preprocessing | None = None  # the declared preprocessing v1 requests go through (None: free-form only)

    @property
    def kind(self) -> str:
        return self.run.kind

    def warm_up(self, batch_sizes: Sequence[int]) -> None:
        """Run zeros at each batch size and check every output against the signature; raises ConfigError if not."""
        for size in batch_sizes:
            arrays = [np.zeros((size, *(d or 1 for d in s.shape)), dtype=s.dtype) for s in self.inputs]
            outputs = self.run(arrays)
            if len(outputs) != len(self.outputs) or any(int(o.shape[0]) != size for o in outputs):
                raise ConfigError(
                    f"{self.reference}: at batch size {size} the model returned shapes "
                    f"{[tuple(o.shape) for o in outputs]}, which do not match its signature outputs "
                    f"{[s.describe() for s in self.outputs]}."
                )


def _read_spec(store: Any, version: Any) -> dict[str, Any]:
    try:
        spec = json.loads(bytes(store.read(version, SPEC_FILE)))
        if not isinstance(spec, dict) or spec.get("format") != FORMAT or not isinstance(spec.get("signature"), dict):
            raise ValueError(f"expected a {FORMAT} spec with a signature")
    except (ValueError, KeyError) as error:
        raise IntegrityError(f"{version.reference}: {SPEC_FILE} is malformed ({error}).") from error
    return spec


def _verified(store: Any, reference: str) -> Any:
    """The version ``reference`` names, after re-hashing every one of its files (not only those we load)."""
    version = store.version(reference)
    report = store.verify(version.reference)
    if not report.ok:
        problems = "; ".join(f"{problem.file}: {problem.message}" for problem in report.problems)
        raise IntegrityError(f"{version.reference} failed verification, refusing to serve it: {problems}")
    return version


def _runtime(name: str, version: str, reference: str, runner: OnnxRunner | TorchRunner, spec: dict[str, Any],
             started: float) -> LoadedRuntime:  # fmt: skip
    signature = spec["signature"]
    # Checked again at load time (it was at register time): a package is data, and this one may have been edited.
    steps = parse_preprocessing(spec.get("preprocessing"), where=f"{reference}: preprocessing", error=IntegrityError)
    if steps is not None:
        steps.check_signature(signature, where=reference, error=IntegrityError)
    return LoadedRuntime(
        name=name, version=version, reference=reference, run=runner,
        inputs=specs_from_signature(signature, "inputs"), outputs=specs_from_signature(signature, "outputs"),
        preprocessing=spec.get("preprocessing"), load_seconds=time.perf_counter() - started, steps=steps,
    )  # fmt: skip


def load_runtime(
    reference: str | os.PathLike[str],
    *,
    store: Any = None,
    runtime: str = "auto",
    threads: int = 1,
    trust: Sequence[str] = (),
) -> LoadedRuntime:
    """Load ``reference`` into a runner after verifying every file of the version; ``auto`` prefers ONNX Runtime.

    ``trust`` (plus the ``KILN_TRUST`` environment variable, comma-separated, read here for servers) names the
    modules whose factories the torch runtime may import, and any non-standard ONNX operator domains; see
    :mod:`kiln.export.trust`. Every graph is checked for external data before onnxruntime sees it.

    The ONNX path reads the graph through the store and never imports torch (a worker starts in about a second
    and stays under 100 MB); the torch path rebuilds the module with :func:`kiln.export.load_package`. A package
    directory (a Path) is loaded by kiln.export, which checks it against its manifest.

    Example:
        >>> loaded = load_runtime("digits@production", store=".kiln")
        >>> loaded.kind, loaded.run([np.zeros((2, 64), np.float32)])[0].shape
        ('onnx', (2, 10))
    """
    from ..store import Store

    if runtime not in ("auto", "onnx", "torch"):
        raise ConfigError(f"runtime must be 'auto', 'onnx' or 'torch'; got {runtime!r}.")
    trusted = (*check_trust(trust), *env_trust())
    started = time.perf_counter()
    if isinstance(reference, os.PathLike):
        return _load_directory(Path(reference), runtime, threads, started, trusted)
    opened = store if isinstance(store, Store) else Store(store, create=False)
    try:
        version = _verified(opened, reference)
        if runtime == "onnx" or (runtime == "auto" and ONNX_FILE in version.files):
            if ONNX_FILE not in version.files:
                raise NotFoundError(f"{version.reference} has no ONNX graph; serve it with runtime='torch'.")
            spec = _read_spec(opened, version)
            graph = bytes(opened.read(version, ONNX_FILE))
            check_onnx(graph, label=version.reference, trust=trusted)
            runner: OnnxRunner | TorchRunner = _onnx_runner(graph, spec, threads)
        else:
            from ..export import load_package

            set_threads(threads)
            package = load_package(version.reference, store=opened, runtime="torch", trust=trusted)
            spec, runner = package.spec, TorchRunner(package.model, threads)
    finally:
        if opened is not store:
            opened.close()
    return _runtime(version.name, str(version.version), version.reference, runner, spec, started)


def _onnx_runner(model: bytes, spec: dict[str, Any], threads: int) -> OnnxRunner:
    signature = spec["signature"]
    session = onnx_session(model, threads)
    return OnnxRunner(session, specs_from_signature(signature, "inputs"), specs_from_signature(signature, "outputs"))


def _load_directory(root: Path, runtime: str, threads: int, started: float, trust: Sequence[str]) -> LoadedRuntime:
    from ..export import load_package

    set_threads(threads)  # kiln.export sizes its onnxruntime session by torch's thread count
    package = load_package(root, runtime=runtime, trust=trust)  # type: ignore[arg-type]
    signature = package.spec["signature"]
    inputs, outputs = specs_from_signature(signature, "inputs"), specs_from_signature(signature, "outputs")
    runner: OnnxRunner | TorchRunner = (
        OnnxRunner(package.model, inputs, outputs) if package.runtime == "onnx" else TorchRunner(package.model, threads)
    )
    return _runtime(root.name, "1", str(root), runner, package.spec, started)
