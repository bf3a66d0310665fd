"""The steps of a declared preprocessing (:mod:`kiln.export.preprocess`): each checks its own fields and turns what a
client sends (texts, WAV bytes, PNG/JPEG bytes, raw rows) into one input array of the model.

Torch-free: numpy, the standard library and Pillow (imported when an image is decoded).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._tokens import PAD_TOKEN, TOKENIZERS, UNK_TOKEN, lookup, pad_ids
from .._wav import WavError, decode_pcm
from ..errors import DataError, KilnError

__all__ = ["INPUT_STEPS", "MEDIA", "AudioStep", "ImageStep", "InputError", "InputStep", "Spec", "StandardizeStep",
           "TextStep"]  # fmt: skip

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


# ---------------------------------------------------------------- checking a spec
class Spec:
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
            self.fail(f"field {name!r} must be an integer in [{low}, {high}], got {shown(value)}")
        return int(value)

    def positive(self, name: str, default: Any = ...) -> float:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
            self.fail(f"field {name!r} must be a positive finite number, got {shown(value)}")
        return float(value)

    def choice(self, name: str, allowed: Sequence[str], default: Any = ...) -> str:
        value = self.get(name, default)
        if value not in allowed:
            self.fail(f"field {name!r} must be one of {list(allowed)}, got {shown(value)}")
        return str(value)

    def numbers(self, name: str, limit: int, *, positive: bool = False, default: Any = ...) -> np.ndarray | None:
        value = self.get(name, default)
        if value is None:
            return None
        ok = isinstance(value, list) and 1 <= len(value) <= limit
        ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        if not ok or (positive and min(value) <= 0):
            kind = "positive finite numbers" if positive else "finite numbers"
            self.fail(f"field {name!r} must be a list of 1 to {limit} {kind}, got {shown(value)}")
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


def shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------- the steps
@dataclass(frozen=True)
class TextStep:
    tokenize: Callable[[str], list[str]]
    ids: dict[str, int]
    max_length: int
    kind = "text"
    dtype_kind = "i"

    @classmethod
    def parse(cls, spec: Spec) -> TextStep:
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
class AudioStep:
    sample_rate: int
    channels: int
    samples: int
    layout: str
    kind = "audio"
    dtype_kind = "f"

    @classmethod
    def parse(cls, spec: Spec) -> AudioStep:
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
class ImageStep:
    mode: str
    size: tuple[int, int]  # (H, W)
    divide_by: float
    layout: str
    mean: np.ndarray | None
    std: np.ndarray | None
    kind = "image"
    dtype_kind = "f"

    @classmethod
    def parse(cls, spec: Spec) -> ImageStep:
        mode = spec.choice("mode", ("RGB", "L"))
        size = spec.get("size")
        if (
            not isinstance(size, list)
            or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= MAX_SIDE for s in size)
        ):
            spec.fail(f"field 'size' must be [height, width], each 1 to {MAX_SIDE}, got {shown(size)}")
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
class StandardizeStep:
    mean: np.ndarray
    std: np.ndarray
    features: list[str] | None
    kind = "standardize"
    dtype_kind = "f"

    @classmethod
    def parse(cls, spec: Spec) -> StandardizeStep:
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


MEDIA = {"audio": "audio/wav", "image": "image/png or image/jpeg", "text": "text/plain"}

InputStep = TextStep | AudioStep | ImageStep | StandardizeStep
INPUT_STEPS: dict[str, Callable[[Spec], InputStep]] = {
    "text": TextStep.parse, "audio": AudioStep.parse, "image": ImageStep.parse, "standardize": StandardizeStep.parse,
}  # fmt: skip
