"""The Try-it panel: predict with a model version in this process (onnxruntime), as ``kiln predict --local`` does.

Versions are loaded with :func:`kiln.serve.runtime.load_runtime` (every file re-hashed, the graph checked, no
factory imported) and kept, a few at a time: ``name@3`` always means the same bytes, so a loaded runtime stays
right until the version is deleted (then its files are gone and the reference fails to resolve).

A version that declares its preprocessing (:mod:`kiln.export.preprocess`) takes what ``kiln predict --local`` takes:
texts, raw rows, or WAV/PNG/JPEG files as ``{"b64": ...}``; it goes through :func:`kiln.serve.local.run_loaded`, the
same code, and the answer carries the class ``labels`` when the package names them.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import DataError, KilnError
from ..export.preprocess import Preprocessing, parse_preprocessing
from ..export.preprocess_steps import AudioStep, ImageStep, StandardizeStep, TextStep
from ..serve.config import ServeConfig
from ..serve.local import run_loaded
from ..serve.protocol import decode_v1
from ..serve.runtime import SPEC_FILE, LoadedRuntime, load_runtime
from ..serve.tensors import RequestError
from .pages import HttpError

__all__ = ["MAX_FILE_BYTES", "MAX_INPUT_BYTES", "RuntimeCache", "declared_steps", "example_input", "panel",
           "predict_impl"]  # fmt: skip

MAX_FILE_BYTES = ServeConfig.max_body_bytes  # a file the panel sends: what `kiln serve` takes as a body by default
MAX_INPUT_BYTES = max(1 << 20, 4 * -(-MAX_FILE_BYTES // 3) + 1024)  # that file in base64, in {"inputs": [{"b64"}]}
EXAMPLE_TEXT = "type a sentence here"
_EXAMPLE_VALUES = 4096  # a pre-filled input larger than this many numbers is not worth pasting
_ACCEPT = {"audio": "audio/wav,audio/x-wav,.wav", "image": "image/png,image/jpeg,.png,.jpg,.jpeg"}


def declared_steps(store: Any, version: Any) -> Preprocessing | None:
    """The preprocessing ``version`` declares (None: none, or a package that does not parse; predicting with it
    then says why, from :func:`kiln.serve.runtime.load_runtime`'s checks)."""
    try:
        spec = json.loads(bytes(store.read(version, SPEC_FILE)))
        return parse_preprocessing(spec.get("preprocessing") if isinstance(spec, dict) else None)
    except (KilnError, KeyError, ValueError, OSError):
        return None


def panel(store: Any, version: Any) -> dict[str, Any]:
    """What the version page's Try-it panel shows: the pre-filled ``example`` (JSON text), the declared ``input``
    step kind, the ``file`` kind a picker takes (audio, image or None), its ``accept`` list and ``max_file_bytes``,
    and whether answers carry ``labels``."""
    steps = declared_steps(store, version)
    step = steps.input if steps is not None else None
    kind = step.kind if isinstance(step, AudioStep | ImageStep) else None
    return {
        "example": json.dumps(example_input(version.signature, steps), separators=(", ", ": ")),
        "input": step.kind if step is not None else None, "file": kind, "accept": _ACCEPT.get(kind or "", ""),
        "max_file_bytes": MAX_FILE_BYTES, "labels": steps is not None and steps.classes is not None,
    }  # fmt: skip


def example_input(signature: Mapping[str, Any] | None, steps: Preprocessing | None = None) -> Any:
    """A request body for ``signature``: one sample of zeros per input (batch dimension 1, other open dims 1); with
    declared input ``steps``, one raw sample of what they take (a sentence, a row of the declared means, a file).

    Example:
        >>> example_input({"inputs": [{"name": "input", "dtype": "float32", "shape": [None, 4]}]})
        {'inputs': [[0.0, 0.0, 0.0, 0.0]]}
    """
    step = steps.input if steps is not None else None
    if isinstance(step, TextStep):
        return {"inputs": [EXAMPLE_TEXT]}
    if isinstance(step, StandardizeStep):
        row = [float(v) for v in np.asarray(step.mean).reshape(-1)]
        return {"inputs": [row if len(row) <= _EXAMPLE_VALUES else [0.0] * len(row)]}
    if isinstance(step, AudioStep | ImageStep):
        return {"inputs": [{"b64": ""}]}  # the file picker fills it in
    entries = list((signature or {}).get("inputs") or [])
    if not entries:
        return {"inputs": []}
    values = {}
    for entry in entries:
        dims = [1 if d is None else int(d) for d in entry.get("shape", [])] or [1]
        zero = 0 if str(entry.get("dtype", "float32")).startswith(("int", "uint", "bool")) else 0.0
        if int(np.prod(dims)) > _EXAMPLE_VALUES:
            dims = [1, *([1] * (len(dims) - 1))]
        values[str(entry.get("name", "input"))] = np.full(dims, zero).tolist()
    return {"inputs": next(iter(values.values())) if len(values) == 1 else values}


class RuntimeCache:
    """Loaded versions, the ``size`` most recently used; one load (and one prediction) at a time per version."""

    def __init__(self, store: Any, *, threads: int = 1, size: int = 4) -> None:
        self.store, self.threads, self.size = store, threads, size
        self._loaded: OrderedDict[str, LoadedRuntime] = OrderedDict()
        self._lock = threading.Lock()  # onnxruntime sessions are thread-safe, but loads and the LRU are not

    def get(self, reference: str) -> LoadedRuntime:
        with self._lock:
            loaded = self._loaded.get(reference)
            if loaded is None:
                loaded = load_runtime(reference, store=self.store, runtime="onnx", threads=self.threads)
                self._loaded[reference] = loaded
            self._loaded.move_to_end(reference)
            while len(self._loaded) > self.size:
                self._loaded.popitem(last=False)
            return loaded

    def forget(self, reference: str) -> None:
        with self._lock:
            self._loaded.pop(reference, None)


def _outputs(loaded: LoadedRuntime, arrays: Sequence[np.ndarray], single: bool) -> Any:
    values = [(out[0] if single else out).tolist() for out in arrays]
    if len(loaded.outputs) == 1:
        return values[0]
    return {spec.name: value for spec, value in zip(loaded.outputs, values, strict=True)}


def predict_impl(runtimes: RuntimeCache, reference: str, payload: Any) -> dict[str, Any]:
    """Outputs of ``reference`` for ``payload`` (``{"inputs": ...}`` as ``kiln serve`` takes it) and the time taken.

    Returns ``{"reference", "outputs", "latency_ms", "load_ms", "runtime"}``, and ``labels`` when the version
    declares its class names; bad input is a 400 that says why.
    """
    started = time.perf_counter()
    loaded = runtimes.get(reference)
    load_ms = (time.perf_counter() - started) * 1000.0
    if loaded.steps is not None:
        return _predict_declared(loaded, payload, load_ms)
    try:
        decoded = decode_v1(payload, loaded.inputs)
    except RequestError as error:
        raise HttpError(400, error.message) from None
    started = time.perf_counter()
    arrays = loaded.run(list(decoded.arrays))
    latency_ms = (time.perf_counter() - started) * 1000.0
    return {
        "reference": loaded.reference, "outputs": _outputs(loaded, arrays, decoded.single),
        "latency_ms": round(latency_ms, 3), "load_ms": round(load_ms, 1), "runtime": loaded.kind,
    }  # fmt: skip


def _predict_declared(loaded: LoadedRuntime, payload: Any, load_ms: float) -> dict[str, Any]:
    """A version with declared preprocessing, through the code ``kiln predict --local`` runs."""
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise HttpError(400, 'send {"inputs": ...}: the same body kiln serve takes.')
    started = time.perf_counter()
    try:
        prediction = run_loaded(loaded, payload["inputs"])
    except DataError as error:
        raise HttpError(400, str(error)) from None
    latency_ms = (time.perf_counter() - started) * 1000.0
    outputs = prediction.outputs
    values = {k: np.asarray(v).tolist() for k, v in outputs.items()} if isinstance(outputs, dict) else outputs.tolist()
    answer = {
        "reference": loaded.reference, "outputs": values,
        "latency_ms": round(latency_ms, 3), "load_ms": round(load_ms, 1), "runtime": loaded.kind,
    }  # fmt: skip
    if prediction.labels is not None:
        answer["labels"] = prediction.labels
    return answer
