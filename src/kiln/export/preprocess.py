"""The preprocessing a package declares and the server applies: text, WAV, PNG/JPEG or raw rows in, labels out.

A package's ``preprocessing`` (in ``spec.json``) is free-form metadata unless it is in this module's closed,
versioned vocabulary, marked by ``"format": "kiln.preprocessing/1"``. A package is data, never code: every step is
one of the kinds below with typed, bounded fields, checked when the model is registered (:class:`ConfigError`) and
again when it is loaded (:class:`IntegrityError`); an unknown kind or field is refused by name. Nothing in a spec
becomes a path, an import or an expression.

    {"format": "kiln.preprocessing/1",
     "input":  {"type": "text", "tokenizer": "word", "vocabulary": ["<pad>", "<unk>", ...], "max_length": 24}
             | {"type": "audio", "sample_rate": 8000, "channels": 1, "samples": 8000, "layout": "CT"}
             | {"type": "image", "mode": "RGB", "size": [32, 32], "divide_by": 255, "layout": "CHW",
                "mean": [...]?, "std": [...]?}
             | {"type": "standardize", "mean": [...], "std": [...], "features": [...]?},
     "output": {"type": "classes", "names": ["cat", "dog"]},
     "notes":  {...}}                                   # free-form, shown, never applied

Both ``input`` and ``output`` are optional. The text step tokenizes with :mod:`kiln._tokens`, the same code
:class:`kiln.data.Vocabulary` trains with; audio is decoded by :mod:`kiln._wav`, like :func:`kiln.data.read_wav`;
images like :class:`kiln.data.ImageFolder` (EXIF orientation, mode, bilinear resize, ``/ divide_by``). Torch-free
(numpy, the standard library and Pillow), so the server's ONNX path uses it without torch.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import IntegrityError, KilnError
from .preprocess_steps import (
    INPUT_STEPS,
    MAX_CLASSES,
    MAX_NAME_CHARS,
    MEDIA,
    AudioStep,
    ImageStep,
    InputError,
    InputStep,
    Spec,
    StandardizeStep,
    TextStep,
    shown,
)

__all__ = ["FORMAT", "InputError", "Preprocessing", "declares_steps", "parse_preprocessing"]

FORMAT = "kiln.preprocessing/1"
_PREFIX = "kiln.preprocessing/"


def declares_steps(preprocessing: Any) -> bool:
    """True when ``preprocessing`` is in the declared vocabulary (any version), not free-form metadata."""
    if not isinstance(preprocessing, Mapping):
        return False
    marker = preprocessing.get("format")
    return isinstance(marker, str) and marker.startswith(_PREFIX)


@dataclass(frozen=True)
class Preprocessing:
    """A checked declaration: the input step (or None), the class names of the first output (or None).

    Example:
        >>> steps = parse_preprocessing({"format": "kiln.preprocessing/1", "output": {"type": "classes",
        ...                              "names": ["no", "yes"]}}, error=ConfigError)
        >>> steps.labels(np.array([[0.1, 0.9]]))
        ['yes']
    """

    input: InputStep | None
    classes: list[str] | None
    spec: dict[str, Any] = field(repr=False)

    @property
    def files(self) -> bool:
        """True when requests may carry files (WAV, PNG/JPEG) rather than JSON values."""
        return isinstance(self.input, AudioStep | ImageStep)

    def from_json(self, value: Any) -> tuple[np.ndarray, bool]:
        """``{"inputs": value}`` of a v1 request: ``(batch array, whether one sample was sent)``."""
        step = self.input
        assert step is not None
        if isinstance(step, TextStep | StandardizeStep):
            return step.from_json(value)
        single = isinstance(value, dict)
        items = [value] if single else value
        if (
            not isinstance(items, list)
            or not items
            or not all(isinstance(i, dict) and set(i) == {"b64"} for i in items)
        ):
            raise InputError(
                422,
                f"this model takes {step.kind} files: send the file as the body (Content-Type "
                f'{MEDIA[step.kind]}), or {{"inputs": [{{"b64": "<base64 of the file>"}}, ...]}}.',
            )
        return np.stack([step.from_file(_b64(item["b64"], i)) for i, item in enumerate(items)]), single

    def from_file(self, data: bytes) -> np.ndarray:
        """One file sent as the request body (WAV, PNG/JPEG, or UTF-8 text): a batch of one."""
        step = self.input
        if not isinstance(step, TextStep | AudioStep | ImageStep):
            raise InputError(415, "this model takes JSON rows, not a file body.")
        return step.from_file(data)[None]

    def labels(self, output: np.ndarray) -> list[str]:
        """The class name of the largest value in each row of the first output."""
        assert self.classes is not None
        return [self.classes[int(i)] for i in np.asarray(output).reshape(len(output), -1).argmax(-1)]

    def check_signature(self, signature: Mapping[str, Any], *, where: str,
                        error: type[KilnError] = IntegrityError) -> None:  # fmt: skip
        """Refuse a declaration that does not fit the model's signature (``{"inputs": [...], "outputs": [...]}``,
        entries ``{"name", "dtype", "shape"}`` with the batch dimension first)."""
        inputs, outputs = _entries(signature, "inputs"), _entries(signature, "outputs")
        step = self.input
        if step is not None:
            if len(inputs) != 1:
                raise error(f"{where}: the {step.kind} preprocessing feeds one input, but the model takes "
                            f"{len(inputs)} ({[name for name, _, _ in inputs]}).")  # fmt: skip
            name, kind, shape = inputs[0]
            fits = len(shape) == len(step.shape) and all(d is None or d == s for d, s in zip(shape, step.shape))  # noqa: B905
            if not fits or kind != step.dtype_kind:
                want = "integers" if step.dtype_kind == "i" else "floats"
                raise error(f"{where}: the {step.kind} preprocessing makes {want} of shape {step.shape} per sample, "
                            f"but the model's input {name!r} takes {_KINDS.get(kind, kind)} of shape "
                            f"{tuple(shape)}.")  # fmt: skip
        if self.classes is not None:
            name, _, shape = outputs[0] if outputs else ("?", "?", ())
            if shape not in ((len(self.classes),), (None,)):
                raise error(f"{where}: {len(self.classes)} class names, but the model's output {name!r} has shape "
                            f"{tuple(shape)} per sample; it must be ({len(self.classes)},).")  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """What the server does with it, for the metadata route and the OpenAPI document."""
        step = self.input
        send: list[str] = []
        if isinstance(step, TextStep):
            send = ['{"inputs": "a text"}', '{"inputs": ["a text", ...]}', "a text/plain body"]
        elif isinstance(step, StandardizeStep):
            send = [f'{{"inputs": [x1, ..., x{len(step.mean)}]}} (raw values)', '{"inputs": [[...], ...]}']
        elif step is not None:
            send = [f"the file as the body (Content-Type {MEDIA[step.kind]})", '{"inputs": {"b64": "..."}}',
                    '{"inputs": [{"b64": "..."}, ...]}']  # fmt: skip
        return {
            "applied": "to /v1 predict requests and kiln predict; /v2 takes the model's tensors as they are",
            "input": step.kind if step is not None else None,
            "send": send,
            "labels": self.classes is not None,
        }


_KINDS = {"f": "floats", "i": "integers", "u": "unsigned integers", "b": "booleans"}


def _entries(signature: Mapping[str, Any], key: str) -> list[tuple[str, str, tuple[int | None, ...]]]:
    """``(name, numpy dtype kind, per-sample shape)`` of each signature entry (None: a dynamic size)."""
    found: list[tuple[str, str, tuple[int | None, ...]]] = []
    for entry in signature.get(key) or []:
        kind: str
        try:
            kind = np.dtype(str(entry.get("dtype"))).kind
        except TypeError:
            kind = str(entry.get("dtype"))
        shape = tuple(None if d is None or d < 0 else int(d) for d in list(entry.get("shape") or [None])[1:])
        found.append((str(entry.get("name")), kind, shape))
    return found


def _b64(value: Any, index: int) -> bytes:
    if not isinstance(value, str):
        raise InputError(422, f"inputs[{index}].b64 must be a base64 string.")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(400, f"inputs[{index}].b64 is not valid base64.") from None


def parse_preprocessing(
    value: Any, *, where: str = "preprocessing", error: type[KilnError] = IntegrityError
) -> Preprocessing | None:
    """The declared steps of a package's ``preprocessing``, checked; None for free-form metadata (applied nothing).

    ``error`` is what a bad declaration raises: :class:`ConfigError` when a model is registered,
    :class:`IntegrityError` (the default) when a stored package is loaded.
    """
    if not declares_steps(value):
        return None
    spec = Spec(value, "", error)
    spec.where = where
    marker = spec.get("format")
    if marker != FORMAT:
        spec.fail(f"has format {shown(marker)}; this kiln reads {FORMAT!r} (a newer kiln wrote it?)")
    step: InputStep | None = None
    raw_input = spec.get("input", None)
    if raw_input is not None:
        inner = Spec(raw_input, f"{where}.input", error)
        kind = inner.get("type")
        if kind not in INPUT_STEPS:
            inner.fail(f"type is {shown(kind)}; known input steps: {sorted(INPUT_STEPS)}")
        inner.where = f"{where}.input ({kind})"
        step = INPUT_STEPS[kind](inner)
        inner.done()
    classes = None
    raw_output = spec.get("output", None)
    if raw_output is not None:
        inner = Spec(raw_output, f"{where}.output", error)
        if inner.get("type") != "classes":
            inner.fail(f"type is {shown(inner.get('type'))}; known output steps: ['classes']")
        classes = inner.names("names", MAX_CLASSES, MAX_NAME_CHARS)
        inner.done()
    spec.get("notes", None)  # free-form: shown in the metadata, never applied
    spec.done()
    return Preprocessing(step, classes, dict(value))
