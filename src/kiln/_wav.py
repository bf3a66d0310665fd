"""Integer PCM WAV decoding with the standard library's ``wave`` and numpy, torch-free.

:func:`kiln.data.read_wav` (training data) and the server's audio preprocessing (:mod:`kiln.export.preprocess`,
WAV bytes in a request) decode with this one function, so served samples are exactly the training samples.
"""

from __future__ import annotations

import struct
import wave
from typing import BinaryIO

import numpy as np

__all__ = ["WavError", "decode_pcm"]


class WavError(ValueError):
    """The bytes are not an integer PCM WAV file kiln reads; the message says why."""


def decode_pcm(source: str | BinaryIO) -> tuple[np.ndarray, int, int]:
    """``(samples, sample_rate, sample_width)`` of a WAV file (a path or a binary file object).

    ``samples`` is float32 in [-1, 1] of shape (T, channels); 8, 16, 24 and 32-bit integer PCM are read (8-bit
    WAV is unsigned, wider samples signed). A file cut short loses its partial last frame. Raises
    :class:`WavError` for anything else (compressed or float WAV, a broken header, not a WAV at all);
    ``FileNotFoundError`` passes through.
    """
    try:
        with wave.open(source, "rb") as file:
            channels, width, rate = file.getnchannels(), file.getsampwidth(), file.getframerate()
            raw = file.readframes(file.getnframes())
    except FileNotFoundError:
        raise
    except (wave.Error, EOFError, struct.error, OSError, ValueError) as error:
        raise WavError(str(error) or type(error).__name__) from error
    if channels < 1 or rate < 1 or width not in (1, 2, 3, 4):
        raise WavError(
            f"{channels} channels, {rate} Hz and {8 * width}-bit samples; kiln reads 8, 16, 24 or 32-bit integer "
            "PCM with at least one channel"
        )
    frame_bytes = width * channels
    raw = raw[: len(raw) - len(raw) % frame_bytes]  # a truncated file can end in a partial frame
    return _pcm_to_float(raw, width).reshape(-1, channels), rate, width  # (T, channels)


def _pcm_to_float(raw: bytes, width: int) -> np.ndarray:
    """Little-endian PCM bytes to float32 in [-1, 1]."""
    if width == 1:
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if width == 3:
        # Place each 3-byte sample in the top of an int32, so its sign bit lands on the int32's sign bit.
        wide = np.zeros((len(raw) // 3, 4), dtype=np.uint8)
        wide[:, 1:] = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        return wide.view("<i4").reshape(-1).astype(np.float32) / 2147483648.0
    return np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2147483648.0
