"""Predict in this process with the server's checks and formats: ``kiln predict --local``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .protocol import decode_v1
from .runtime import load_runtime
from .tensors import RequestError

__all__ = ["predict_local"]


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
    from ..errors import DataError

    loaded = load_runtime(reference, store=store, runtime=runtime, threads=threads, trust=trust)
    try:
        decoded = decode_v1({"inputs": inputs}, loaded.inputs)
    except RequestError as error:
        raise DataError(error.message) from None
    outputs = loaded.run(list(decoded.arrays))
    values = [out[0] if decoded.single else out for out in outputs]
    if len(loaded.outputs) == 1:
        return values[0]
    return {spec.name: value for spec, value in zip(loaded.outputs, values, strict=True)}
