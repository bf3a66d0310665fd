"""The two wire formats: kiln's simple JSON (``{"inputs": ...}``) and the Open Inference Protocol (KServe v2).

Both decode into one tuple of arrays in signature order, each with the batch dimension first, so requests of
either protocol share batches; both encode the model's output arrays back with orjson (numpy arrays directly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from .tensors import RequestError, TensorSpec, as_array, as_shaped_array

__all__ = ["Decoded", "decode_v1", "decode_v2", "encode_v1", "encode_v2", "parse_json"]

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True, slots=True)
class Decoded:
    """Arrays in signature order (batch first), whether the client sent one unbatched sample, v2 extras."""

    arrays: tuple[np.ndarray, ...]
    single: bool = False
    request_id: str | None = None
    outputs: tuple[str, ...] | None = None


def parse_json(body: bytes) -> Any:
    """The request body as JSON; a 400 that says where the JSON broke (orjson refuses NaN, deep nesting, bad UTF-8)."""
    if not body:
        raise RequestError(400, 'the request body is empty; send a JSON object such as {"inputs": [[...]]}.')
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        hint = " (JSON has no NaN or Infinity; inputs must be finite numbers)" if b"N" in body or b"e" in body else ""
        raise RequestError(400, f"the request body is not valid JSON: {str(error)[:160]}{hint}.") from None


def _object(payload: Any, what: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise RequestError(400, f"the request body must be a JSON object with {what}; got {type(payload).__name__}.")
    return payload


def _same_batch(arrays: Sequence[np.ndarray], names: Sequence[str], where: str) -> None:
    sizes = {int(a.shape[0]) for a in arrays}
    if len(sizes) > 1:
        shown = ", ".join(f"{n}: {int(a.shape[0])}" for n, a in zip(names, arrays, strict=True))
        raise RequestError(422, f"{where}: every input must have the same batch size; got {shown}.")


def decode_v1(payload: Any, specs: Sequence[TensorSpec]) -> Decoded:
    """``{"inputs": value}`` (one input) or ``{"inputs": {name: value, ...}}``; a value is one sample or a batch.

    Example:
        >>> decode_v1({"inputs": [0.0] * 64}, specs).single
        True
    """
    inputs = _object(payload, "an 'inputs' field").get("inputs")
    if inputs is None:
        raise RequestError(400, "the request body has no 'inputs' field; send {\"inputs\": [[...], ...]}.")
    if isinstance(inputs, dict):
        unknown = sorted(set(inputs) - {s.name for s in specs})
        missing = [s.name for s in specs if s.name not in inputs]
        if unknown or missing:
            raise RequestError(
                422, f"inputs must name exactly {[s.name for s in specs]}; unknown {[u[:40] for u in unknown][:5]}, "
                f"missing {missing}."
            )  # fmt: skip
        pairs = [as_array(inputs[s.name], s, f"inputs.{s.name}") for s in specs]
    elif len(specs) == 1:
        pairs = [as_array(inputs, specs[0], "inputs")]
    else:
        names = ", ".join(s.name for s in specs)
        raise RequestError(422, f"this model takes {len(specs)} inputs; send inputs as an object {{{names}}}.")
    singles = {single for _, single in pairs}
    if len(singles) > 1:
        raise RequestError(422, "inputs mix single samples and batches; send all as batches or all as one sample.")
    arrays = tuple(array for array, _ in pairs)
    _same_batch(arrays, [s.name for s in specs], "inputs")
    return Decoded(arrays, single=singles.pop())


def encode_v1(outputs: Sequence[np.ndarray], specs: Sequence[TensorSpec], single: bool) -> bytes:
    """``{"outputs": array}`` (one output) or ``{"outputs": {name: array}}``; a single sample loses its batch dim."""
    values = [out[0] if single else out for out in outputs]
    body: Any = values[0] if len(specs) == 1 else {s.name: v for s, v in zip(specs, values, strict=True)}
    return orjson.dumps({"outputs": body}, option=_NUMPY)


def decode_v2(payload: Any, specs: Sequence[TensorSpec], output_specs: Sequence[TensorSpec]) -> Decoded:
    """An Open Inference Protocol request: ``{"inputs": [{"name", "shape", "datatype", "data"}], "outputs"?, "id"?}``.

    Example:
        >>> decode_v2({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}, ...)
    """
    body = _object(payload, "an 'inputs' list")
    entries = body.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise RequestError(400, "'inputs' must be a non-empty list of {name, shape, datatype, data} objects.")
    by_name = {s.name: s for s in specs}
    given: dict[str, np.ndarray] = {}
    for i, entry in enumerate(entries):
        where = f"inputs[{i}]"
        if not isinstance(entry, dict):
            raise RequestError(400, f"{where} must be an object with name, shape, datatype and data.")
        name = entry.get("name")
        spec = by_name.get(name) if isinstance(name, str) else None
        if spec is None:
            raise RequestError(422, f"{where}.name is {str(name)[:40]!r}; this model's inputs are {list(by_name)}.")
        where = f"inputs[{i}] ({name})"
        if spec.name in given:
            raise RequestError(422, f"{where} is given twice.")
        if entry.get("datatype") != spec.datatype:
            raise RequestError(
                422, f"{where}.datatype is {str(entry.get('datatype'))[:20]!r}; this input is {spec.datatype}."
            )
        if "data" not in entry:
            raise RequestError(400, f"{where} has no 'data' (binary tensor data is not supported; send JSON data).")
        given[spec.name] = as_shaped_array(entry["data"], entry.get("shape"), spec, where)
    missing = [s.name for s in specs if s.name not in given]
    if missing:
        raise RequestError(422, f"inputs lack {missing}; this model's inputs are {list(by_name)}.")
    arrays = tuple(given[s.name] for s in specs)
    _same_batch(arrays, [s.name for s in specs], "inputs")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(400, "'id' must be a string.")
    return Decoded(arrays, request_id=request_id[:256] if request_id else None, outputs=_wanted(body, output_specs))


def _wanted(body: dict[str, Any], output_specs: Sequence[TensorSpec]) -> tuple[str, ...] | None:
    requested = body.get("outputs")
    if requested is None:
        return None
    names = {s.name for s in output_specs}
    if not isinstance(requested, list) or not all(isinstance(o, dict) and o.get("name") in names for o in requested):
        raise RequestError(422, f"'outputs' must be a list of {{\"name\": ...}} naming outputs of {sorted(names)}.")
    return tuple(o["name"] for o in requested)


def encode_v2(
    outputs: Sequence[np.ndarray], specs: Sequence[TensorSpec], *, model: str, version: str, decoded: Decoded
) -> bytes:
    """The Open Inference Protocol response: each output flattened (row-major) with its shape and datatype."""
    tensors = [
        {"name": s.name, "datatype": s.datatype, "shape": list(out.shape), "data": out.reshape(-1)}
        for s, out in zip(specs, outputs, strict=True)
        if decoded.outputs is None or s.name in decoded.outputs
    ]
    response: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if decoded.request_id is not None:
        response["id"] = decoded.request_id
    return orjson.dumps(response, option=_NUMPY)
