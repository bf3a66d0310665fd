"""The Try-it panel: predict with a model version in this process (onnxruntime), as ``kiln predict --local`` does.

Versions are loaded with :func:`kiln.serve.runtime.load_runtime` (every file re-hashed, the graph checked, no
factory imported) and kept, a few at a time: ``name@3`` always means the same bytes, so a loaded runtime stays
right until the version is deleted (then its files are gone and the reference fails to resolve).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..serve.protocol import decode_v1
from ..serve.runtime import LoadedRuntime, load_runtime
from ..serve.tensors import RequestError
from .pages import HttpError

__all__ = ["MAX_INPUT_BYTES", "RuntimeCache", "example_input", "predict_impl"]

MAX_INPUT_BYTES = 1 << 20
_EXAMPLE_VALUES = 4096  # a pre-filled input larger than this many numbers is not worth pasting


def example_input(signature: Mapping[str, Any] | None) -> Any:
    """A request body for ``signature``: one sample of zeros per input (batch dimension 1, other open dims 1).

    Example:
        >>> example_input({"inputs": [{"name": "input", "dtype": "float32", "shape": [None, 4]}]})
        {'inputs': [[0.0, 0.0, 0.0, 0.0]]}
    """
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

    Returns ``{"reference", "outputs", "latency_ms", "load_ms", "runtime"}``; bad input is a 400 that says why.
    """
    started = time.perf_counter()
    loaded = runtimes.get(reference)
    load_ms = (time.perf_counter() - started) * 1000.0
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
