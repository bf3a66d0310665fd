"""Writers for the small files the data tests read: PNG images, WAV audio, sine waves."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import torch

from kiln.data import ArrayDataset


def write_png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (6, 5)) -> Path:
    """A solid-colour RGB PNG of ``size`` (width, height)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def sine(frequency: float, rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    """A float64 (T,) sine wave."""
    t = np.arange(round(rate * seconds)) / rate
    return amplitude * np.sin(2 * math.pi * frequency * t)


def write_wav(path: Path, samples: np.ndarray, rate: int, width: int = 2) -> Path:
    """Write float samples in [-1, 1], (T,) or (T, channels), as ``width``-byte integer PCM."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = samples if samples.ndim == 2 else samples[:, None]  # (T, channels)
    if width == 1:
        data = np.round(frames * 127 + 128).astype(np.uint8).tobytes()
    elif width == 2:
        data = np.round(frames * 32767).astype("<i2").tobytes()
    elif width == 3:
        values = np.round(frames * (2**23 - 1)).astype("<i4")
        data = values.reshape(-1, 1).view(np.uint8)[:, :3].tobytes()  # the low 3 bytes, little-endian
    else:
        data = np.round(frames * (2**31 - 1)).astype("<i4").tobytes()
    with wave.open(str(path), "wb") as file:
        file.setnchannels(frames.shape[1])
        file.setsampwidth(width)
        file.setframerate(rate)
        file.writeframes(data)
    return path


def inputs(dataset: ArrayDataset) -> torch.Tensor:
    """The single input tensor of an ArrayDataset (narrowed for type checkers)."""
    assert isinstance(dataset.x, torch.Tensor)
    return dataset.x


def targets(dataset: ArrayDataset) -> torch.Tensor:
    """The targets of an ArrayDataset that has them."""
    assert dataset.y is not None
    return dataset.y
