"""Predict in this process with the server's checks, formats and declared preprocessing: ``kiln predict --local``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .protocol import Decoded, decode_declared, decode_v1
from .runtime import LoadedRuntime, load_runtime
from .tensors import RequestError

__all__ = ["Prediction", "predict_local", "run_loaded", "run_local"]


@dataclass(frozen=True)
class Prediction:
    """What a v1 request answers: the outputs (one array, or ``{name: array}``) and, when the package declares its
    class names, the label of each sample (one label for one unbatched sample)."""

    outputs: np.ndarray | dict[str, np.ndarray]
    labels: list[str] | str | None = None


def run_local(
    reference: str | os.PathLike[str],
    inputs: Any = None,
    *,
    file: bytes | None = None,
    media: str | None = None,
    store: Any = None,
    runtime: str = "auto",
    threads: int = 1,
    trust: Sequence[str] = (),
) -> Prediction:
    """Outputs and labels for ``inputs`` (what a server takes in ``{"inputs": ...}``), or for one ``file`` of kind
    ``media`` (``"audio"``, ``"image"``, ``"text"``), from the model in this process, with the package's declared
    preprocessing applied as the server applies it (:mod:`kiln.export.preprocess`).

    Example:
        >>> run_local("topics@production", ["the striker scored"], store=".kiln").labels
        ['sports']
    """
    loaded = load_runtime(reference, store=store, runtime=runtime, threads=threads, trust=trust)
    return run_loaded(loaded, inputs, file, media)


def predict_local(
    reference: str | os.PathLike[str],
    inputs: Any,
    *,
    store: Any = None,
    runtime: str = "auto",
    threads: int = 1,
    trust: Sequence[str] = (),
) -> np.ndarray | dict[str, np.ndarray]:
    """Outputs for ``inputs`` (as a server would take them in ``{"inputs": ...}``) from the model in this process.

    Example:
        >>> predict_local("digits@production", [[0.0] * 64], store=".kiln").shape
        (1, 10)
    """
    return run_local(reference, inputs, store=store, runtime=runtime, threads=threads, trust=trust).outputs


def run_loaded(loaded: LoadedRuntime, inputs: Any, file: bytes | None = None, media: str | None = None) -> Prediction:
    """:func:`run_local` with a runtime already loaded (the UI's Try-it panel keeps a few): one implementation of
    the declared preprocessing and labels; bad input is a :class:`~kiln.errors.DataError` that says why."""
    from ..errors import DataError

    steps = loaded.steps
    try:
        decoded: Decoded
        if steps is not None and steps.input is not None:
            body = file if file is not None else _json_body(inputs)
            decoded = decode_declared(body, media if file is not None else None, steps, loaded.inputs)
        elif file is not None:
            raise RequestError(415, f"{loaded.reference} declares no input preprocessing; pass its tensors as JSON.")
        else:
            decoded = decode_v1({"inputs": inputs}, loaded.inputs)
    except RequestError as error:
        raise DataError(error.message) from None
    outputs = loaded.run(list(decoded.arrays))
    values = [out[0] if decoded.single else out for out in outputs]
    labels: list[str] | str | None = None
    if steps is not None and steps.classes is not None:
        names = steps.labels(outputs[0])
        labels = names[0] if decoded.single else names
    if len(loaded.outputs) == 1:
        return Prediction(values[0], labels)
    return Prediction({spec.name: value for spec, value in zip(loaded.outputs, values, strict=True)}, labels)


def _json_body(inputs: Any) -> bytes:
    import orjson

    return orjson.dumps({"inputs": inputs}, option=orjson.OPT_SERIALIZE_NUMPY)
