"""Inputs checked against the model's signature: JSON values become numpy arrays of the right dtype and shape.

Everything a client sends is judged here, before it can reach a batch: a value of the wrong kind, shape or range,
a ragged list or a non-finite number is a :class:`RequestError` whose message names the field. One bad request
therefore never spoils the batch it would have joined.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["RequestError", "TensorSpec", "as_array", "specs_from_signature"]

# signature dtype (torch naming) -> (numpy dtype, Open Inference Protocol datatype)
_DTYPES: dict[str, tuple[np.dtype[Any], str]] = {
    "float32": (np.dtype(np.float32), "FP32"),
    "float64": (np.dtype(np.float64), "FP64"),
    "float16": (np.dtype(np.float16), "FP16"),
    "int64": (np.dtype(np.int64), "INT64"),
    "int32": (np.dtype(np.int32), "INT32"),
    "int16": (np.dtype(np.int16), "INT16"),
    "int8": (np.dtype(np.int8), "INT8"),
    "uint8": (np.dtype(np.uint8), "UINT8"),
    "bool": (np.dtype(np.bool_), "BOOL"),
}
_INT64_LIMIT = 1 << 63  # a v2 dimension is an int64
# which kinds numpy infers from JSON are acceptable for each kind the signature asks for
_ACCEPT = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}
_KIND_WORDS = {"f": "non-integer numbers", "i": "integers", "u": "integers", "b": "booleans", "U": "strings"}


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a message for the client (never a path or traceback)."""

    def __init__(self, status: int, message: str, *, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, tuple(headers)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, numpy dtype and per-sample shape (the batch dimension left out)."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | None, ...]
    datatype: str  # the Open Inference Protocol name of the dtype ("FP32")

    @property
    def batched_shape(self) -> list[int]:
        """The shape with the batch dimension, ``-1`` for dynamic sizes (the v2 metadata convention)."""
        return [-1, *(-1 if d is None else d for d in self.shape)]

    def describe(self) -> str:
        dims = ", ".join("*" if d is None else str(d) for d in self.shape)
        return f"{self.dtype.name} of shape (n, {dims})" if dims else f"{self.dtype.name} of shape (n,)"


def specs_from_signature(signature: Mapping[str, Any], key: str) -> tuple[TensorSpec, ...]:
    """The ``inputs`` or ``outputs`` of a package signature as TensorSpecs; unknown dtypes are a ConfigError."""
    specs = []
    for entry in signature.get(key) or []:
        dtype = str(entry.get("dtype"))
        if dtype not in _DTYPES:
            raise ConfigError(
                f"signature {key} {entry.get('name')!r} has dtype {dtype!r}, which the server cannot take as JSON; "
                f"supported: {sorted(_DTYPES)}."
            )
        shape = list(entry.get("shape") or [])
        if not shape:
            raise ConfigError(f"signature {key} {entry.get('name')!r} has no batch dimension; it cannot be batched.")
        numpy_dtype, datatype = _DTYPES[dtype]
        per_sample = tuple(None if d is None or d < 0 else int(d) for d in shape[1:])
        specs.append(TensorSpec(str(entry["name"]), numpy_dtype, per_sample, datatype))
    if not specs:
        raise ConfigError(f"the package signature lists no {key}; register the model again with an example_input.")
    return tuple(specs)


def _where(field: str, index: Sequence[int]) -> str:
    return field + "".join(f"[{int(i)}]" for i in index)


def _matches(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected, strict=True))


def _convert(value: Any, spec: TensorSpec, field: str) -> np.ndarray:
    """``value`` as an array of ``spec.dtype`` (any shape), refusing values of the wrong kind or range."""
    try:
        inferred = np.array(value)
    except (ValueError, TypeError, OverflowError, RecursionError) as error:
        reason = "too deeply nested" if "maximum" in str(error) else "ragged (nested lists of different lengths)"
        raise RequestError(400, f"{field} is {reason}; expected {spec.describe()}.") from None
    kind = inferred.dtype.kind
    if kind not in _ACCEPT[spec.dtype.kind]:
        got = _KIND_WORDS.get(kind, "null, objects or mixed values")
        if inferred.ndim == 0 and kind not in "fiub":
            got = "a string" if kind == "U" else "an object or null"
        raise RequestError(422, f"{field} must hold {spec.dtype.name} values; got {got}. Expected {spec.describe()}.")
    if spec.dtype.kind in "iu" and inferred.size:
        info = np.iinfo(spec.dtype)
        low, high = inferred.min(), inferred.max()
        if low < info.min or high > info.max:
            limits = f"[{info.min}, {info.max}]"
            raise RequestError(422, f"{field} has values outside the range of {spec.dtype.name} {limits}.")
    try:
        array = inferred.astype(spec.dtype, copy=False)  # 1e39 becomes inf in float32: reported below, by index
    except RuntimeWarning:  # where warnings are errors, numpy's overflow warning is raised instead (errstate
        with np.errstate(over="ignore"):  # on every request would cost a quarter of this function)
            array = inferred.astype(spec.dtype, copy=False)
    _require_finite(array, spec, field)
    return array


def _require_finite(array: np.ndarray, spec: TensorSpec, field: str) -> None:
    if spec.dtype.kind == "f" and not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0]
        shown = array[tuple(bad)]
        raise RequestError(422, f"{_where(field, bad)} is {shown} in {spec.dtype.name}; every input must be finite.")


def as_array(value: Any, spec: TensorSpec, field: str) -> tuple[np.ndarray, bool]:
    """``value`` checked against ``spec``: ``(array with a batch dimension, True if the client sent one sample)``.

    A value shaped like one sample (``spec.shape``) is given a batch dimension of 1; one shaped like a batch
    (``(n, *spec.shape)``, n >= 1) is taken as is. Anything else is a RequestError naming ``field``.

    Example:
        >>> spec = TensorSpec("x", np.dtype("float32"), (2,), "FP32")
        >>> as_array([[1, 2], [3, 4]], spec, "inputs")[0].shape
        (2, 2)
    """
    array = _convert(value, spec, field)
    if _matches(array.shape, spec.shape):
        return array[None], True
    if array.ndim >= 1 and array.shape[0] >= 1 and _matches(array.shape[1:], spec.shape):
        return array, False
    raise RequestError(
        422,
        f"{field} has shape {tuple(array.shape)}; expected {spec.describe()} for a batch, or one sample of shape "
        f"{tuple('*' if d is None else d for d in spec.shape)}.",
    )


def _checked_shape(shape: Any, spec: TensorSpec, field: str) -> list[int]:
    """A v2 ``shape``: a list of dimensions, each an int64 (anything else is malformed: 400), that is
    ``(n, *spec.shape)`` with n >= 1 (422)."""
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < _INT64_LIMIT for d in shape
    ):
        raise RequestError(
            400, f"{field}.shape must be a list of non-negative integers below 2**63; got {str(shape)[:80]}."
        )
    if len(shape) != len(spec.shape) + 1 or shape[0] < 1 or not _matches(tuple(shape[1:]), spec.shape):
        raise RequestError(
            422, f"{field}.shape is {shape}; expected [n, {', '.join(str(d) for d in spec.batched_shape[1:])}] "
            f"with n >= 1 ({spec.describe()})."
        )  # fmt: skip
    return shape


def as_shaped_array(value: Any, shape: Any, spec: TensorSpec, field: str) -> np.ndarray:
    """A v2 tensor: ``value`` (flat or nested) reshaped to ``shape``, which must be ``(n, *spec.shape)``."""
    shape = _checked_shape(shape, spec, field)
    array = _convert(value, spec, f"{field}.data")
    needed = math.prod(shape)  # exact: numpy's product of dimensions wraps around past 2**63
    if array.size != needed:
        raise RequestError(400, f"{field}.data holds {array.size} values but shape {shape} needs {needed}.")
    return array.reshape(shape)


def from_binary(data: memoryview, shape: Any, spec: TensorSpec, field: str) -> np.ndarray:
    """A v2 tensor sent as binary data (little-endian, row-major, BOOL one byte of 0 or 1), shaped ``shape``."""
    shape = _checked_shape(shape, spec, field)
    needed = math.prod(shape) * spec.dtype.itemsize
    if len(data) != needed:
        raise RequestError(
            400, f"{field} has binary_data_size {len(data)}, but shape {shape} of {spec.datatype} takes {needed} bytes."
        )
    if spec.dtype.kind == "b":
        raw = np.frombuffer(data, dtype=np.uint8)
        if raw.size and raw.max() > 1:
            raise RequestError(422, f"{field} holds a BOOL byte other than 0 or 1.")
        array = raw.astype(np.bool_)
    else:  # a copy: the request body is read-only, and torch.from_numpy wants a writable array
        array = np.frombuffer(data, dtype=spec.dtype.newbyteorder("<")).astype(spec.dtype)
    array = array.reshape(shape)
    _require_finite(array, spec, field)
    return array
