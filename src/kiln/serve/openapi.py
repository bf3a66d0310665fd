"""The OpenAPI document (``/openapi.json``) and a self-contained HTML page over it (``/docs``, no external scripts)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ..export.preprocess import Preprocessing
from .tensors import TensorSpec

__all__ = ["docs_page", "openapi"]


def _array_schema(spec: TensorSpec, *, batched: bool) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "integer"} if spec.dtype.kind in "iu" else {"type": "number"}
    if spec.dtype.kind == "b":
        item = {"type": "boolean"}
    for size in reversed((None, *spec.shape) if batched else spec.shape):
        item = {"type": "array", "items": item, **({"minItems": size, "maxItems": size} if size else {})}
    return item


def _error(description: str) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"error": {"type": "string"}}}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _error("malformed request (invalid JSON, ragged lists)"),
    "401": _error("missing or wrong bearer token (when the server has one)"),
    "413": _error("body over the size limit"),
    "422": _error("inputs do not match the signature (dtype, shape, non-finite)"),
    "503": _error("not ready yet, the queue is full, or too many connections (see Retry-After)"),
    "504": _error("not answered within the request timeout"),
}


def _get(summary: str) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": {"description": "OK"}, "401": _ERRORS["401"]}}}


_FILE = {"type": "string", "contentEncoding": "base64"}
_MEDIA_TYPES = {"audio": ("audio/wav",), "image": ("image/png", "image/jpeg"), "text": ("text/plain",)}


def _v1_request(inputs: Sequence[TensorSpec], steps: Preprocessing | None) -> dict[str, Any]:
    """The v1 request body: the model's tensors, or what its declared preprocessing takes (texts, files, raw rows)."""
    kind = steps.input.kind if steps is not None and steps.input is not None else None
    if kind == "text":
        v1_inputs: dict[str, Any] = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"},
                                                                   "minItems": 1}]}  # fmt: skip
    elif kind in ("audio", "image"):
        file = {"type": "object", "required": ["b64"], "properties": {"b64": _FILE}, "additionalProperties": False}
        v1_inputs = {"oneOf": [file, {"type": "array", "items": file, "minItems": 1}]}
    elif len(inputs) == 1:  # the model's tensor; raw rows for "standardize" have the same shape
        v1_inputs = {"oneOf": [_array_schema(inputs[0], batched=True), _array_schema(inputs[0], batched=False)]}
    else:
        v1_inputs = {"type": "object", "properties": {s.name: _array_schema(s, batched=True) for s in inputs}}
    content: dict[str, Any] = {"application/json": {"schema": {
        "type": "object", "required": ["inputs"], "properties": {"inputs": v1_inputs}}}}  # fmt: skip
    for media in _MEDIA_TYPES.get(kind or "", ()):
        content[media] = {"schema": {"type": "string", "format": "binary"}}  # one file (or text) as the body
    return {"required": True, "content": content}


def openapi(
    name: str | None, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], steps: Preprocessing | None = None
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of this server; request schemas follow the model's signature once it is loaded, and
    its declared preprocessing (:mod:`kiln.export.preprocess`) for the v1 route."""
    model = name or "{name}"
    labels = steps is not None and steps.classes is not None
    v2_input = {
        "type": "object",
        "required": ["name", "shape", "datatype"],  # and data, or parameters.binary_data_size
        "properties": {"name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
                       "datatype": {"type": "string"}, "data": {"type": "array"}, "parameters": {"type": "object"}},
    }  # fmt: skip
    post = {"responses": {"200": {"description": "model outputs"}, **_ERRORS}}
    paths = {
        f"/v1/models/{model}:predict": {"post": {
            "summary": "Predict: {\"inputs\": one sample or a batch} -> {\"outputs\": ...}"
                       + (", \"labels\": class names" if labels else "")
                       + ("; the server applies the package's declared preprocessing" if steps is not None else ""),
            "requestBody": _v1_request(inputs, steps),
            **post, "responses": {**post["responses"], "415": _error("a file body this model does not take")}}},
        f"/v1/models/{model}": _get("Model metadata: version, runtime, signature, preprocessing"),
        f"/v2/models/{model}/infer": {"post": {
            "summary": "Open Inference Protocol (KServe v2) inference; JSON, or binary tensor data after a JSON "
                       "object of Inference-Header-Content-Length bytes",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["inputs"],
                "properties": {"id": {"type": "string"}, "inputs": {"type": "array", "items": v2_input},
                               "outputs": {"type": "array"}}}}}},
            **post}},
        f"/v2/models/{model}": _get("Open Inference Protocol model metadata"),
        f"/v2/models/{model}/ready": _get("Model readiness"),
        f"/v2/models/{model}/config": _get("Model configuration (Triton's shape: max_batch_size, input, output)"),
        "/v2": _get("Open Inference Protocol server metadata"),
        "/v2/health/live": _get("Liveness (Open Inference Protocol)"),
        "/v2/health/ready": _get("Readiness (Open Inference Protocol)"),
        "/livez": _get("Liveness: the process answers"),
        "/readyz": _get("Readiness: the model is loaded, verified and warmed up"),
        "/metrics": _get("Prometheus metrics (text exposition format)"),
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {"title": f"kiln serve: {model}", "version": __version__},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }


def docs_page(document: dict[str, Any]) -> bytes:
    """A plain HTML listing of the OpenAPI paths, with the raw document one link away."""
    rows = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(operation.get('summary', ''))}</td></tr>"
            )
    title = html.escape(document["info"]["title"])
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
        f"<h1>{title}</h1><p>Machine-readable: <a href='/openapi.json'>/openapi.json</a></p>"
        f"<table border='1' cellpadding='4'><tr><th>method</th><th>path</th><th>what</th></tr>{''.join(rows)}"
        "</table></body></html>"
    ).encode()
