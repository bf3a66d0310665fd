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
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._tokens import PAD_TOKEN, TOKENIZERS, UNK_TOKEN, lookup, pad_ids
from .._wav import WavError, decode_pcm
from ..errors import DataError, IntegrityError, KilnError

__all__ = ["FORMAT", "InputError", "Preprocessing", "declares_steps", "parse_preprocessing"]

FORMAT = "kiln.preprocessing/1"
_PREFIX = "kiln.preprocessing/"
MAX_VOCABULARY = 1_000_000  # tokens in a text step's vocabulary
MAX_TOKEN_CHARS = 1_000
MAX_LENGTH = 65_536  # tokens per text, samples are bounded below
MAX_SAMPLES = 48_000 * 600  # ten minutes at 48 kHz
MAX_CHANNELS = 64
MAX_SAMPLE_RATE = 768_000
MAX_SIDE = 4096  # pixels of a declared image size
MAX_PIXELS = 4096 * 4096  # of an image a client sends, checked from its header before it is decoded
MAX_FEATURES = 1_000_000  # values per standardized row
MAX_CLASSES = 100_000
MAX_NAME_CHARS = 256
_IMAGE_FORMATS = ("PNG", "JPEG")


class InputError(DataError):
    """A request's input does not fit the declared preprocessing; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def declares_steps(preprocessing: Any) -> bool:
    """True when ``preprocessing`` is in the declared vocabulary (any version), not free-form metadata."""
    if not isinstance(preprocessing, Mapping):
        return False
    marker = preprocessing.get("format")
    return isinstance(marker, str) and marker.startswith(_PREFIX)


# ---------------------------------------------------------------- checking a spec
class _Spec:
    """Reads one step's fields, each once, refusing wrong types, out-of-bound values and unknown names."""

    def __init__(self, value: Any, where: str, error: type[KilnError]) -> None:
        self.where, self.error = where, error
        if not isinstance(value, Mapping):
            self.fail(f"must be an object, got {type(value).__name__}")
        self.value: Mapping[str, Any] = value
        self.seen: set[str] = set()

    def fail(self, message: str) -> Any:
        raise self.error(f"{self.where} {message}.")

    def get(self, name: str, default: Any = ...) -> Any:
        self.seen.add(name)
        if name not in self.value:
            return default if default is not ... else self.fail(f"lacks the field {name!r}")
        return self.value[name]

    def integer(self, name: str, low: int, high: int, default: Any = ...) -> int:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(f"field {name!r} must be an integer in [{low}, {high}], got {_shown(value)}")
        return int(value)

    def positive(self, name: str, default: Any = ...) -> float:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
            self.fail(f"field {name!r} must be a positive finite number, got {_shown(value)}")
        return float(value)

    def choice(self, name: str, allowed: Sequence[str], default: Any = ...) -> str:
        value = self.get(name, default)
        if value not in allowed:
            self.fail(f"field {name!r} must be one of {list(allowed)}, got {_shown(value)}")
        return str(value)

    def numbers(self, name: str, limit: int, *, positive: bool = False, default: Any = ...) -> np.ndarray | None:
        value = self.get(name, default)
        if value is None:
            return None
        ok = isinstance(value, list) and 1 <= len(value) <= limit
        ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        if not ok or (positive and min(value) <= 0):
            kind = "positive finite numbers" if positive else "finite numbers"
            self.fail(f"field {name!r} must be a list of 1 to {limit} {kind}, got {_shown(value)}")
        return np.asarray(value, dtype=np.float32)

    def names(self, name: str, limit: int, chars: int, default: Any = ...) -> list[str] | None:
        value = self.get(name, default)
        if value is None:
            return None
        if (
            not isinstance(value, list)
            or not 1 <= len(value) <= limit
            or not all(isinstance(v, str) and 0 < len(v) <= chars for v in value)
        ):
            self.fail(f"field {name!r} must be a list of 1 to {limit} strings of 1 to {chars} characters")
        return list(value)

    def done(self) -> None:
        unknown = sorted(str(k) for k in self.value if k not in self.seen)
        if unknown:
            self.fail(f"has unknown field{'s' if len(unknown) > 1 else ''} {[u[:40] for u in unknown[:5]]}; "
                      f"allowed: {sorted(self.seen)}")  # fmt: skip


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------- the steps
@dataclass(frozen=True)
class _Text:
    tokenize: Callable[[str], list[str]]
    ids: dict[str, int]
    max_length: int
    kind = "text"
    dtype_kind = "i"

    @classmethod
    def parse(cls, spec: _Spec) -> _Text:
        tokenizer = spec.choice("tokenizer", sorted(TOKENIZERS))
        tokens = spec.names("vocabulary", MAX_VOCABULARY, MAX_TOKEN_CHARS)
        assert tokens is not None
        if tokens[:2] != [PAD_TOKEN, UNK_TOKEN] or len(set(tokens)) != len(tokens):
            spec.fail(f"field 'vocabulary' must list distinct tokens in id order, starting {[PAD_TOKEN, UNK_TOKEN]} "
                      "(Vocabulary.state_dict()['tokens'])")  # fmt: skip
        max_length = spec.integer("max_length", 1, MAX_LENGTH)
        return cls(TOKENIZERS[tokenizer], {token: i for i, token in enumerate(tokens)}, max_length)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.max_length,)

    def from_json(self, value: Any) -> tuple[np.ndarray, bool]:
        single = isinstance(value, str)
        texts = [value] if single else value
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise InputError(422, 'this model takes text: send {"inputs": "a text"} or {"inputs": ["a text", ...]} '
                             "(the server tokenizes it; /v2 takes token ids).")  # fmt: skip
        return self.encode(texts), single

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return pad_ids([lookup(self.tokenize(text), self.ids, self.max_length) for text in texts], self.max_length)

    def from_file(self, data: bytes) -> np.ndarray:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError(400, f"the text/plain body is not UTF-8 ({error.reason} at byte {error.start}).") from None
        return self.encode([text])[0]


@dataclass(frozen=True)
class _Audio:
    sample_rate: int
    channels: int
    samples: int
    layout: str
    kind = "audio"
    dtype_kind = "f"

    @classmethod
    def parse(cls, spec: _Spec) -> _Audio:
        rate = spec.integer("sample_rate", 1, MAX_SAMPLE_RATE)
        channels = spec.integer("channels", 1, MAX_CHANNELS)
        samples = spec.integer("samples", 1, MAX_SAMPLES)
        layout = spec.choice("layout", ("CT", "T"), "CT")
        if layout == "T" and channels != 1:
            spec.fail(f"has layout 'T' (samples only) with {channels} channels; use layout 'CT'")
        return cls(rate, channels, samples, layout)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.samples,) if self.layout == "T" else (self.channels, self.samples)

    def from_file(self, data: bytes) -> np.ndarray:
        try:
            samples, rate, _ = decode_pcm(io.BytesIO(data))  # (T, channels)
        except WavError as error:
            raise InputError(400, f"cannot decode the WAV file ({error}); send uncompressed integer PCM WAV.") from None
        if rate != self.sample_rate or samples.shape[1] != self.channels:
            raise InputError(
                400, f"the WAV file is {rate} Hz with {samples.shape[1]} channel(s); this model takes "
                f"{self.sample_rate} Hz with {self.channels} (the server does not resample or mix: convert it, "
                f"e.g. ffmpeg -i in.wav -ar {self.sample_rate} -ac {self.channels} out.wav)."
            )  # fmt: skip
        fitted = np.zeros((self.samples, self.channels), dtype=np.float32)  # cut or zero-padded at the end
        kept = samples[: self.samples]
        fitted[: len(kept)] = kept
        return fitted[:, 0] if self.layout == "T" else np.ascontiguousarray(fitted.T)  # (T,) or (C, T)


@dataclass(frozen=True)
class _Image:
    mode: str
    size: tuple[int, int]  # (H, W)
    divide_by: float
    layout: str
    mean: np.ndarray | None
    std: np.ndarray | None
    kind = "image"
    dtype_kind = "f"

    @classmethod
    def parse(cls, spec: _Spec) -> _Image:
        mode = spec.choice("mode", ("RGB", "L"))
        size = spec.get("size")
        if (
            not isinstance(size, list)
            or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= MAX_SIDE for s in size)
        ):
            spec.fail(f"field 'size' must be [height, width], each 1 to {MAX_SIDE}, got {_shown(size)}")
        divide_by = spec.positive("divide_by", 255.0)
        layout = spec.choice("layout", ("CHW", "HWC"), "CHW")
        channels = 3 if mode == "RGB" else 1
        mean = spec.numbers("mean", channels, default=None)
        std = spec.numbers("std", channels, positive=True, default=None)
        if (mean is None) != (std is None) or (mean is not None and std is not None and len(mean) != len(std)):
            spec.fail(f"needs both 'mean' and 'std' ({channels} values each, or one for every channel), or neither")
        return cls(mode, (size[0], size[1]), divide_by, layout, mean, std)

    @property
    def shape(self) -> tuple[int, ...]:
        channels = 3 if self.mode == "RGB" else 1
        return (channels, *self.size) if self.layout == "CHW" else (*self.size, channels)

    def from_file(self, data: bytes) -> np.ndarray:
        try:
            from PIL import Image, ImageOps
        except ImportError as error:
            raise ImportError("serving image inputs needs Pillow: pip install 'kiln[data]'") from error
        try:
            with Image.open(io.BytesIO(data), formats=_IMAGE_FORMATS) as opened:
                width, height = opened.size
                if width * height > MAX_PIXELS:
                    raise InputError(400, f"the image is {width}x{height} pixels; the server decodes at most "
                                     f"{MAX_PIXELS} pixels (resize it first).")  # fmt: skip
                image = ImageOps.exif_transpose(opened) or opened
                if image.mode == "P" and "transparency" in image.info:
                    image = image.convert("RGBA")  # palette transparency must go through RGBA to convert cleanly
                image = image.convert(self.mode)
                if image.size != (self.size[1], self.size[0]):
                    image = image.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)  # PIL: (W, H)
                pixels = np.array(image, dtype=np.uint8)  # (H, W) or (H, W, C)
        except InputError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise InputError(400, f"cannot decode the image ({str(error)[:120]}); send a PNG or JPEG file.") from None
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]  # (H, W, 1)
        values = pixels.astype(np.float32) / np.float32(self.divide_by)  # (H, W, C), as ImageFolder: / 255
        if self.mean is not None and self.std is not None:
            values = (values - self.mean) / self.std
        return np.ascontiguousarray(values.transpose(2, 0, 1) if self.layout == "CHW" else values)


@dataclass(frozen=True)
class _Standardize:
    mean: np.ndarray
    std: np.ndarray
    features: list[str] | None
    kind = "standardize"
    dtype_kind = "f"

    @classmethod
    def parse(cls, spec: _Spec) -> _Standardize:
        mean = spec.numbers("mean", MAX_FEATURES)
        std = spec.numbers("std", MAX_FEATURES, positive=True)
        features = spec.names("features", MAX_FEATURES, MAX_NAME_CHARS, default=None)
        assert mean is not None and std is not None
        if len(mean) != len(std) or (features is not None and len(features) != len(mean)):
            spec.fail(f"has {len(mean)} means, {len(std)} stds and {len(features or mean)} features; one each per "
                      "feature")  # fmt: skip
        return cls(mean, std, features)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.mean),)

    def from_json(self, value: Any) -> tuple[np.ndarray, bool]:
        width = len(self.mean)
        try:
            rows = np.asarray(value, dtype=np.float64)
        except (ValueError, TypeError, OverflowError, RecursionError):
            rows = None
        if rows is None or rows.ndim not in (1, 2) or rows.shape[-1] != width or rows.size == 0:
            raise InputError(422, f"this model takes raw rows of {width} numbers (the server standardizes them): "
                             f"send {{\"inputs\": [x1, ..., x{width}]}} or a list of such rows.")  # fmt: skip
        if not np.isfinite(rows).all():
            raise InputError(422, "every input value must be a finite number.")
        single = rows.ndim == 1
        return (rows.astype(np.float32).reshape(-1, width) - self.mean) / self.std, single


_Input = _Text | _Audio | _Image | _Standardize
_INPUTS: dict[str, Callable[[_Spec], _Input]] = {
    "text": _Text.parse, "audio": _Audio.parse, "image": _Image.parse, "standardize": _Standardize.parse,
}  # fmt: skip


# ---------------------------------------------------------------- the whole declaration
@dataclass(frozen=True)
class Preprocessing:
    """A checked declaration: the input step (or None), the class names of the first output (or None).

    Example:
        >>> steps = parse_preprocessing({"format": "kiln.preprocessing/1", "output": {"type": "classes",
        ...                              "names": ["no", "yes"]}}, error=ConfigError)
        >>> steps.labels(np.array([[0.1, 0.9]]))
        ['yes']
    """

    input: _Input | None
    classes: list[str] | None
    spec: dict[str, Any] = field(repr=False)

    @property
    def files(self) -> bool:
        """True when requests may carry files (WAV, PNG/JPEG) rather than JSON values."""
        return isinstance(self.input, _Audio | _Image)

    def from_json(self, value: Any) -> tuple[np.ndarray, bool]:
        """``{"inputs": value}`` of a v1 request: ``(batch array, whether one sample was sent)``."""
        step = self.input
        assert step is not None
        if isinstance(step, _Text | _Standardize):
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
                f'{_MEDIA[step.kind]}), or {{"inputs": [{{"b64": "<base64 of the file>"}}, ...]}}.',
            )
        return np.stack([step.from_file(_b64(item["b64"], i)) for i, item in enumerate(items)]), single

    def from_file(self, data: bytes) -> np.ndarray:
        """One file sent as the request body (WAV, PNG/JPEG, or UTF-8 text): a batch of one."""
        step = self.input
        if not isinstance(step, _Text | _Audio | _Image):
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
        if isinstance(step, _Text):
            send = ['{"inputs": "a text"}', '{"inputs": ["a text", ...]}', "a text/plain body"]
        elif isinstance(step, _Standardize):
            send = [f'{{"inputs": [x1, ..., x{len(step.mean)}]}} (raw values)', '{"inputs": [[...], ...]}']
        elif step is not None:
            send = [f"the file as the body (Content-Type {_MEDIA[step.kind]})", '{"inputs": {"b64": "..."}}',
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


_MEDIA = {"audio": "audio/wav", "image": "image/png or image/jpeg", "text": "text/plain"}


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
    spec = _Spec(value, "", error)
    spec.where = where
    marker = spec.get("format")
    if marker != FORMAT:
        spec.fail(f"has format {_shown(marker)}; this kiln reads {FORMAT!r} (a newer kiln wrote it?)")
    step: _Input | None = None
    raw_input = spec.get("input", None)
    if raw_input is not None:
        inner = _Spec(raw_input, f"{where}.input", error)
        kind = inner.get("type")
        if kind not in _INPUTS:
            inner.fail(f"type is {_shown(kind)}; known input steps: {sorted(_INPUTS)}")
        inner.where = f"{where}.input ({kind})"
        step = _INPUTS[kind](inner)
        inner.done()
    classes = None
    raw_output = spec.get("output", None)
    if raw_output is not None:
        inner = _Spec(raw_output, f"{where}.output", error)
        if inner.get("type") != "classes":
            inner.fail(f"type is {_shown(inner.get('type'))}; known output steps: ['classes']")
        classes = inner.names("names", MAX_CLASSES, MAX_NAME_CHARS)
        inner.done()
    spec.get("notes", None)  # free-form: shown in the metadata, never applied
    spec.done()
    return Preprocessing(step, classes, dict(value))
