"""Audio: PCM WAV decoding, band-limited resampling, log-mel spectrograms and a folder-per-class dataset.

Everything here is numpy, the stdlib ``wave`` module and torch: no torchaudio or librosa. WAV bytes are decoded by
:mod:`kiln._wav`, which the server's audio preprocessing uses too, so served samples are the training samples; a
model that computes its features inside (``log_mel_spectrogram`` in ``forward``) then serves raw WAV files.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._wav import WavError, decode_pcm
from ..errors import ConfigError, DataError
from .folders import ClassFolder, collate_same_shape, scan_class_folders

__all__ = ["AudioFolder", "log_mel_spectrogram", "mel_filterbank", "read_wav", "resample"]

_FEATURES = ("waveform", "log_mel")


def read_wav(path: str | os.PathLike[str], *, mono: bool = True) -> tuple[np.ndarray, int]:
    """Decode an integer PCM WAV file (8, 16, 24 or 32-bit) into float32 samples in [-1, 1] and its sample rate.

    Samples have shape (T,) with channels averaged when ``mono``, else (T, channels).

    Example:
        >>> samples, rate = read_wav("speech/yes/0001.wav")
        >>> samples.dtype, samples.ndim, rate
        (dtype('float32'), 1, 16000)
    """
    name = os.fspath(path)
    try:
        samples, rate, _ = decode_pcm(name)  # (T, channels)
    except FileNotFoundError as error:
        raise DataError(f"read_wav: no such file {name!r}.") from error
    except WavError as error:
        raise DataError(
            f"cannot decode WAV file {name!r} ({error}); kiln reads uncompressed integer PCM WAV. Fix or remove the "
            "file, or convert it, e.g. ffmpeg -i in.x -c:a pcm_s16le out.wav."
        ) from error
    return (samples.mean(axis=1, dtype=np.float32) if mono else samples), rate


def resample(
    waveform: torch.Tensor, orig_rate: int, new_rate: int, *, zero_crossings: int = 12, rolloff: float = 0.92
) -> torch.Tensor:
    """Resample (..., T) audio from ``orig_rate`` to ``new_rate`` Hz with a Hann-windowed sinc low-pass filter.

    Each output sample is a weighted sum of the input samples within ``zero_crossings`` lobes of the sinc; the
    cut-off sits at ``rolloff`` times the lower Nyquist frequency, so downsampling removes the content that
    would otherwise alias. Works for any pair of rates; the output has ceil(T * new_rate / orig_rate) samples.

    Example:
        >>> resample(torch.randn(44100), 44100, 16000).shape
        torch.Size([16000])
    """
    for name, rate in (("orig_rate", orig_rate), ("new_rate", new_rate)):
        if not isinstance(rate, int) or isinstance(rate, bool) or rate < 1:
            raise ConfigError(f"resample: {name} must be a positive int (Hz), got {rate!r}.")
    if orig_rate == new_rate:
        return waveform
    length = waveform.shape[-1]
    out_length = math.ceil(length * new_rate / orig_rate)
    if length == 0:
        return waveform.new_zeros(*waveform.shape[:-1], 0, dtype=torch.float32)
    x = waveform.reshape(-1, length).float()  # (C, T)
    cutoff = 0.5 * min(1.0, new_rate / orig_rate) * rolloff  # cycles per input sample
    half_width = zero_crossings / (2.0 * cutoff)  # in input samples
    reach = _reach(orig_rate, new_rate, zero_crossings=zero_crossings, rolloff=rolloff)
    x = torch.nn.functional.pad(x, (reach, reach + 1))  # zeros beyond both ends
    offsets = torch.arange(-reach, reach + 1, device=x.device)  # (K,)
    out = x.new_empty(x.shape[0], out_length)
    step = orig_rate / new_rate  # input samples per output sample
    chunk = 8192  # bounds the (C, N, K) gather below to a few MB
    for start in range(0, out_length, chunk):
        times = torch.arange(start, min(start + chunk, out_length), dtype=torch.float64, device=x.device) * step  # (N,)
        index = times.floor().long()[:, None] + offsets  # (N, K) input sample indices
        distance = (times[:, None] - index).float()  # (N, K)
        window = torch.cos(distance * (math.pi / (2 * half_width))).square() * (distance.abs() < half_width)
        weights = 2 * cutoff * torch.sinc(2 * cutoff * distance) * window  # (N, K)
        out[:, start : start + len(times)] = (x[:, index + reach] * weights).sum(-1)  # (C, N)
    return out.reshape(*waveform.shape[:-1], out_length)


def _reach(orig_rate: int, new_rate: int, *, zero_crossings: int = 12, rolloff: float = 0.92) -> int:
    """How many input samples on each side of an output sample :func:`resample`'s filter reads."""
    return math.ceil(zero_crossings / (min(1.0, new_rate / orig_rate) * rolloff))


def _hz_to_mel(hz: torch.Tensor | float) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(hz, dtype=torch.float64) / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@functools.lru_cache(maxsize=16)
def mel_filterbank(
    *, sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> torch.Tensor:
    """Triangular filters on the (HTK) mel scale: a float32 (n_mels, n_fft // 2 + 1) matrix for power spectra.

    Filter ``m`` rises from mel point ``m`` to its peak at point ``m + 1`` and falls to zero at ``m + 2``, the
    ``n_mels + 2`` points being evenly spaced in mel between ``f_min`` and ``f_max`` (default: Nyquist). The
    result is cached; do not modify it in place.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ConfigError(f"mel_filterbank: need 0 <= f_min < f_max <= sample_rate / 2, got {f_min}, {f_max}.")
    frequencies = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # (F,)
    points = _mel_to_hz(torch.linspace(float(_hz_to_mel(f_min)), float(_hz_to_mel(f_max)), n_mels + 2))
    lower, center, upper = points[:-2, None], points[1:-1, None], points[2:, None]  # (n_mels, 1) each
    rising = (frequencies - lower) / (center - lower)  # (n_mels, F)
    falling = (upper - frequencies) / (upper - center)
    return torch.minimum(rising, falling).clamp_min(0.0).float()


def log_mel_spectrogram(
    waveform: torch.Tensor,
    *,
    sample_rate: int,
    n_mels: int = 64,
    n_fft: int = 400,
    hop_length: int = 160,
    f_min: float = 0.0,
    f_max: float | None = None,
) -> torch.Tensor:
    """Natural log of mel-band power of (..., T) audio: shape (..., n_mels, 1 + T // hop_length).

    Frames are Hann-windowed ``n_fft``-sample FFTs every ``hop_length`` samples, centred on their sample (the
    signal is zero-padded by ``n_fft // 2`` at both ends); ``1e-6`` is added to the power before the log.

    Example:
        >>> log_mel_spectrogram(torch.randn(16000), sample_rate=16000).shape
        torch.Size([64, 101])
    """
    for name, value in (("n_mels", n_mels), ("n_fft", n_fft), ("hop_length", hop_length)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"log_mel_spectrogram: {name} must be a positive int, got {value!r}.")
    length = waveform.shape[-1]
    spectrum = torch.stft(
        waveform.reshape(-1, length).float(),
        n_fft,
        hop_length=hop_length,
        window=torch.hann_window(n_fft, device=waveform.device),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )  # (C, n_fft // 2 + 1, frames)
    power = spectrum.real.square() + spectrum.imag.square()
    filters = mel_filterbank(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, f_min=f_min, f_max=f_max)
    mel = torch.matmul(filters.to(power.device), power)  # (C, n_mels, frames)
    return torch.log(mel + 1e-6).reshape(*waveform.shape[:-1], n_mels, mel.shape[-1])


class AudioFolder(ClassFolder):
    """WAV files stored as ``root/<class name>/<file>.wav``, served as fixed-length features and a class id.

    Every file is decoded to mono, resampled to ``sample_rate``, then trimmed or zero-padded to ``duration``
    seconds. ``features="waveform"`` gives a float32 (1, T) tensor, ``"log_mel"`` a (1, n_mels, frames) log-mel
    spectrogram (see :func:`log_mel_spectrogram`). Class ids follow the sorted folder names (``.classes``); pass
    ``classes=`` to pin them for another split. ``batch_transform`` runs on whole batches.

    Example:
        >>> train = AudioFolder("commands/train", duration=1.0, features="log_mel")
        >>> x, y = train[0]
        >>> x.shape
        torch.Size([1, 64, 101])
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        duration: float,
        sample_rate: int = 16000,
        features: str = "waveform",
        n_mels: int = 64,
        n_fft: int = 400,
        hop_length: int = 160,
        extensions: Sequence[str] = (".wav",),
        classes: Sequence[str] | None = None,
        batch_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if features not in _FEATURES:
            raise ConfigError(f"AudioFolder: features must be one of {_FEATURES}, got {features!r}.")
        if not isinstance(sample_rate, int) or sample_rate < 1:
            raise ConfigError(f"AudioFolder: sample_rate must be a positive int (Hz), got {sample_rate!r}.")
        if not duration > 0 or round(duration * sample_rate) < 1:
            raise ConfigError(f"AudioFolder: duration must be a positive number of seconds, got {duration!r}.")
        self.root = Path(root)
        self.sample_rate, self.duration, self.features = sample_rate, float(duration), features
        self.n_mels, self.n_fft, self.hop_length = n_mels, n_fft, hop_length
        self.num_samples = round(duration * sample_rate)
        self.batch_transform = batch_transform
        if features == "log_mel":  # check the settings now rather than in a worker
            mel_filterbank(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels)
            log_mel_spectrogram(
                torch.zeros(1), sample_rate=sample_rate, n_mels=n_mels, n_fft=n_fft, hop_length=hop_length
            )
        self.classes, self.samples = scan_class_folders(self.root, extensions, classes=classes, kind="AudioFolder")

    def __repr__(self) -> str:
        return (
            f"AudioFolder({str(self.root)!r}, n={len(self)}, classes={len(self.classes)}, "
            f"sample_rate={self.sample_rate}, duration={self.duration}, features={self.features!r})"
        )

    def load(self, path: str | os.PathLike[str]) -> torch.Tensor:
        """Decode one WAV file into this dataset's features: (1, T) waveform or (1, n_mels, frames) log-mel."""
        samples, rate = read_wav(path)
        waveform = torch.from_numpy(samples)  # (T_file,)
        if rate != self.sample_rate:
            # Resample only what survives the trim, plus a margin so the filter sees the samples past the cut.
            needed = math.ceil(self.num_samples * rate / self.sample_rate) + _reach(rate, self.sample_rate)
            waveform = resample(waveform[:needed], rate, self.sample_rate)
        waveform = waveform[: self.num_samples]
        if len(waveform) < self.num_samples:
            waveform = torch.nn.functional.pad(waveform, (0, self.num_samples - len(waveform)))
        waveform = waveform[None]  # (1, T)
        if self.features == "waveform":
            return waveform
        return log_mel_spectrogram(
            waveform, sample_rate=self.sample_rate, n_mels=self.n_mels, n_fft=self.n_fft, hop_length=self.hop_length
        )  # (1, n_mels, frames)

    def collate_fn(self, items: list[tuple[torch.Tensor, int]]) -> Any:
        """Stack samples into a batch (all have one shape, since every file is cut to ``duration``)."""
        return collate_same_shape(items, hint="this is a bug in AudioFolder's fixed-length padding")
