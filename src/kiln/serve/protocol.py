"""The two wire formats: kiln's simple JSON (``{"inputs": ...}``) and the Open Inference Protocol (KServe v2).

Both decode into one tuple of arrays in signature order, each with the batch dimension first, so requests of
either protocol share batches; both encode the model's output arrays back with orjson (numpy arrays directly).
The v2 side also speaks the binary tensor data extension (what ``tritonclient`` sends by default): a JSON object
of ``Inference-Header-Content-Length`` bytes, then each binary input's bytes in order; outputs come back the same
way when asked for (``binary_data_output``, or ``binary_data`` on an output).

JSON has no NaN or Infinity: a non-finite output value is sent as the string ``"NaN"``, ``"Infinity"`` or
``"-Infinity"`` (the Protocol Buffers JSON mapping's spelling; ``float()`` in Python and ``Number()`` in JavaScript
read them back). Finite outputs, the usual case, cost one ``isfinite`` pass and go to orjson untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ..export.preprocess import InputError, Preprocessing
from .tensors import RequestError, TensorSpec, as_array, as_shaped_array, from_binary

__all__ = ["Decoded", "decode_declared", "decode_v1", "decode_v2", "encode_v1", "encode_v2", "encode_v2_binary",
           "media_kind", "parse_json", "split_binary"]  # fmt: skip

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_NAMED = (("NaN", np.isnan), ("Infinity", np.isposinf), ("-Infinity", np.isneginf))


@dataclass(frozen=True, slots=True)
class Decoded:
    """Arrays in signature order (batch first), whether the client sent one unbatched sample, v2 extras."""

    arrays: tuple[np.ndarray, ...]
    single: bool = False
    request_id: str | None = None
    outputs: tuple[str, ...] | None = None
    binary_outputs: frozenset[str] = frozenset()  # outputs to send as binary data


def parse_json(body: bytes) -> Any:
    """The request body as JSON; a 400 that says where the JSON broke (orjson refuses NaN, deep nesting, bad UTF-8)."""
    if not body:
        raise RequestError(400, 'the request body is empty; send a JSON object such as {"inputs": [[...]]}.')
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        hint = " (JSON has no NaN or Infinity; inputs must be finite numbers)" if b"N" in body or b"e" in body else ""
        if b"binary_data_size" in body:
            hint = " (binary tensor data: send the Inference-Header-Content-Length header, the JSON object's length)"
        raise RequestError(400, f"the request body is not valid JSON: {str(error)[:160]}{hint}.") from None


def split_binary(body: bytes, header_length: bytes) -> tuple[bytes, memoryview]:
    """``(the JSON object, the binary data after it)`` of a body sent with ``Inference-Header-Content-Length``."""
    try:
        length = int(header_length)
    except ValueError:
        raise RequestError(400, f"Inference-Header-Content-Length is {header_length[:20]!r}, not a number.") from None
    if not 0 < length <= len(body):
        raise RequestError(
            400, f"Inference-Header-Content-Length is {length}, but the body has {len(body)} bytes; it must be the "
            "length of the JSON object that starts the body, binary tensor data following it."
        )  # fmt: skip
    return body[:length], memoryview(body)[length:]


def _json_values(array: np.ndarray) -> Any:
    """``array`` as orjson should write it: as is when finite, else a list with NaN and infinities named."""
    if array.dtype.kind != "f" or np.isfinite(array).all():  # the common case: about 2 us, no copy
        return array
    array = np.asarray(array)  # a numpy scalar (one sample of a 1-d output) becomes a 0-d array
    values = array.astype(object)
    for name, where in _NAMED:
        values[where(array)] = name
    return values.tolist()


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


def encode_v1(
    outputs: Sequence[np.ndarray], specs: Sequence[TensorSpec], single: bool, labels: Sequence[str] | None = None
) -> bytes:
    """``{"outputs": array}`` (one output) or ``{"outputs": {name: array}}``; a single sample loses its batch dim.

    ``labels`` (a package that declares its class names) adds ``"labels"``: one name per sample, or one name.
    """
    values = [_json_values(out[0] if single else out) for out in outputs]
    body: Any = values[0] if len(specs) == 1 else {s.name: v for s, v in zip(specs, values, strict=True)}
    if labels is None:
        return orjson.dumps({"outputs": body}, option=_NUMPY)
    return orjson.dumps({"outputs": body, "labels": labels[0] if single else list(labels)}, option=_NUMPY)


# Content types of a request body that is one file, not JSON: what it is, for the declared preprocessing.
_MEDIA = {b"audio/wav": "audio", b"audio/x-wav": "audio", b"audio/wave": "audio", b"audio/vnd.wave": "audio",
          b"image/png": "image", b"image/jpeg": "image", b"text/plain": "text"}  # fmt: skip


def media_kind(content_type: bytes | None) -> str | None:
    """``"audio"``, ``"image"`` or ``"text"`` for a file body's Content-Type, None for JSON (or anything else)."""
    if content_type is None:
        return None
    return _MEDIA.get(content_type.partition(b";")[0].strip().lower())


def decode_declared(body: bytes, media: str | None, steps: Preprocessing, specs: Sequence[TensorSpec]) -> Decoded:
    """A v1 request to a model that declares its input preprocessing: the body is one file of kind ``media``
    (``"audio"``, ``"image"``, ``"text"``), or JSON ``{"inputs": ...}`` of raw values (texts, base64 files, rows).

    Example:
        >>> decode_declared(b'{"inputs": ["the striker scored"]}', None, steps, specs).arrays[0].shape
        (1, 24)
    """
    assert steps.input is not None
    if media == "text" and steps.input.kind != "text":
        media = None  # JSON sent as text/plain, as some clients do
    try:
        if media is None:
            inputs = _object(parse_json(body), "an 'inputs' field").get("inputs")
            if inputs is None:
                raise RequestError(400, f"the request body has no 'inputs' field; send {steps.describe()['send'][0]}.")
            array, single = steps.from_json(inputs)
        elif media != steps.input.kind:
            raise RequestError(
                415, f"the body is {media} but this model takes {steps.input.kind}; send {steps.describe()['send'][0]}."
            )
        else:
            array, single = steps.from_file(body), True
    except InputError as error:
        raise RequestError(error.status, error.message) from None
    return Decoded((array.astype(specs[0].dtype, copy=False),), single=single)


def decode_v2(
    payload: Any, specs: Sequence[TensorSpec], output_specs: Sequence[TensorSpec], *, binary: memoryview | None = None
) -> Decoded:
    """An Open Inference Protocol request: ``{"inputs": [{"name", "shape", "datatype", "data"}], "outputs"?, "id"?}``.

    ``binary`` is the body after the JSON object (binary tensor data extension): an input with
    ``"parameters": {"binary_data_size": n}`` and no ``data`` takes the next ``n`` bytes of it.

    Example:
        >>> decode_v2({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}, ...)
    """
    body = _object(payload, "an 'inputs' list")
    entries = body.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise RequestError(400, "'inputs' must be a non-empty list of {name, shape, datatype, data} objects.")
    by_name = {s.name: s for s in specs}
    given: dict[str, np.ndarray] = {}
    offset = 0
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
        size = _binary_size(entry, where)
        if size is None:
            if "data" not in entry:
                raise RequestError(400, f"{where} has neither 'data' nor a 'binary_data_size' parameter.")
            given[spec.name] = as_shaped_array(entry["data"], entry.get("shape"), spec, where)
            continue
        if binary is None:
            raise RequestError(
                400, f"{where} has binary_data_size but the request has no Inference-Header-Content-Length header "
                "(binary tensor data extension); send that header with the JSON length, or the values in 'data'."
            )  # fmt: skip
        if size > len(binary) - offset:
            raise RequestError(
                400, f"{where} has binary_data_size {size}, but only {len(binary) - offset} bytes remain."
            )
        given[spec.name] = from_binary(binary[offset : offset + size], entry.get("shape"), spec, where)
        offset += size
    if binary is not None and offset != len(binary):
        raise RequestError(400, f"{len(binary) - offset} bytes of binary data follow the inputs that declare theirs.")
    missing = [s.name for s in specs if s.name not in given]
    if missing:
        raise RequestError(422, f"inputs lack {missing}; this model's inputs are {list(by_name)}.")
    arrays = tuple(given[s.name] for s in specs)
    _same_batch(arrays, [s.name for s in specs], "inputs")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(400, "'id' must be a string.")
    outputs, binary_outputs = _wanted(body, output_specs)
    return Decoded(arrays, request_id=request_id[:256] if request_id else None, outputs=outputs,
                   binary_outputs=binary_outputs)  # fmt: skip


def _binary_size(entry: dict[str, Any], where: str) -> int | None:
    parameters = entry.get("parameters")
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise RequestError(400, f"{where}.parameters.binary_data_size must be a non-negative integer; got {size!r}.")
    if "data" in entry:
        raise RequestError(400, f"{where} has both 'data' and binary_data_size; send the values one way.")
    return size


def _flag(parameters: Any, name: str, default: bool) -> bool:
    value = parameters.get(name, default) if isinstance(parameters, dict) else default
    return value is True


def _wanted(body: dict[str, Any], output_specs: Sequence[TensorSpec]) -> tuple[tuple[str, ...] | None, frozenset[str]]:
    """The outputs asked for (None: all) and those to send as binary data."""
    names = [s.name for s in output_specs]
    all_binary = _flag(body.get("parameters"), "binary_data_output", False)
    requested = body.get("outputs")
    if requested is None:
        return None, frozenset(names) if all_binary else frozenset()
    if not isinstance(requested, list) or not all(isinstance(o, dict) and o.get("name") in names for o in requested):
        raise RequestError(422, f"'outputs' must be a list of {{\"name\": ...}} naming outputs of {sorted(names)}.")
    for output in requested:
        parameters = output.get("parameters")
        if isinstance(parameters, dict) and parameters.get("classification"):
            raise RequestError(
                400, "the classification extension is not supported; ask for the output itself and rank it yourself."
            )
    binary = frozenset(o["name"] for o in requested if _flag(o.get("parameters"), "binary_data", all_binary))
    return tuple(o["name"] for o in requested), binary


def encode_v2(
    outputs: Sequence[np.ndarray], specs: Sequence[TensorSpec], *, model: str, version: str, decoded: Decoded
) -> bytes:
    """The Open Inference Protocol response: each output flattened (row-major) with its shape and datatype."""
    tensors = [
        {"name": s.name, "datatype": s.datatype, "shape": list(out.shape), "data": _json_values(out.reshape(-1))}
        for s, out in zip(specs, outputs, strict=True)
        if decoded.outputs is None or s.name in decoded.outputs
    ]
    return orjson.dumps(_v2_response(tensors, model, version, decoded), option=_NUMPY)


def encode_v2_binary(
    outputs: Sequence[np.ndarray], specs: Sequence[TensorSpec], *, model: str, version: str, decoded: Decoded
) -> tuple[bytes, int]:
    """``(body, JSON length)``: the response with ``decoded.binary_outputs`` as binary data after the JSON object
    (the length goes in the Inference-Header-Content-Length header)."""
    tensors, chunks = [], []
    for s, out in zip(specs, outputs, strict=True):
        if decoded.outputs is not None and s.name not in decoded.outputs:
            continue
        tensor: dict[str, Any] = {"name": s.name, "datatype": s.datatype, "shape": list(out.shape)}
        if s.name in decoded.binary_outputs:
            raw = np.ascontiguousarray(out, dtype=s.dtype.newbyteorder("<")).tobytes()  # the declared datatype
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = _json_values(out.reshape(-1))
        tensors.append(tensor)
    header = orjson.dumps(_v2_response(tensors, model, version, decoded), option=_NUMPY)
    return header + b"".join(chunks), len(header)


def _v2_response(tensors: list[dict[str, Any]], model: str, version: str, decoded: Decoded) -> dict[str, Any]:
    response: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if decoded.request_id is not None:
        response["id"] = decoded.request_id
    return response
