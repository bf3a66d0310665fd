import math
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from kiln.data import (
    ArrayDataset,
    AudioFolder,
    GaussianNoise,
    log_mel_spectrogram,
    make_loader,
    mel_filterbank,
    read_wav,
    resample,
)
from kiln.errors import ConfigError, DataError

from .files import inputs, sine, write_wav


def peak_frequency(samples: torch.Tensor, rate: int) -> float:
    spectrum = torch.fft.rfft(samples.double() * torch.hann_window(len(samples), dtype=torch.float64)).abs()
    return float(spectrum.argmax()) * rate / len(samples)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("channels", [1, 2])
def test_read_wav_decodes_every_pcm_width(tmp_path: Path, width: int, channels: int) -> None:
    left = sine(440, 8000, seconds=0.1)
    frames = np.stack([left, -left], axis=1) if channels == 2 else left
    samples, rate = read_wav(write_wav(tmp_path / "a.wav", frames, 8000, width=width), mono=False)
    assert rate == 8000 and samples.dtype == np.float32 and samples.shape == (800, channels)
    np.testing.assert_allclose(samples, frames.reshape(800, channels), atol=1.5 / 2 ** (8 * width - 1))
    mono, _ = read_wav(tmp_path / "a.wav")
    assert mono.shape == (800,)
    np.testing.assert_allclose(mono, frames.reshape(800, channels).mean(axis=1), atol=1.5 / 2 ** (8 * width - 1))


def test_read_wav_reaches_full_scale(tmp_path: Path) -> None:
    path = tmp_path / "edge.wav"
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(3)
        file.setframerate(8000)
        file.writeframes(bytes([0x00, 0x00, 0x80, 0xFF, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF]))  # min, max, -1
    samples, _ = read_wav(path)
    assert samples.tolist() == pytest.approx([-1.0, 1 - 2**-23, -(2**-23)])


@pytest.mark.parametrize(
    "content",
    [b"", b"RIFF\x24\x00\x00\x00WAVEjunk", b"not a wav file at all" * 4],
    ids=["empty", "truncated-header", "garbage"],
)
def test_corrupt_wav_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.wav"
    path.write_bytes(content)
    with pytest.raises(DataError, match="cannot decode WAV") as error:
        read_wav(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("orig", "new", "frequency"), [(44100, 16000, 440.0), (8000, 22050, 1000.0), (16000, 16001, 3000.0)]
)
def test_resampling_preserves_a_sines_frequency(orig: int, new: int, frequency: float) -> None:
    out = resample(torch.from_numpy(sine(frequency, orig)).float(), orig, new)
    assert out.shape == (math.ceil(orig * new / orig),)
    assert abs(peak_frequency(out, new) - frequency) <= new / len(out)
    middle = out[len(out) // 4 : -len(out) // 4]
    assert abs(float(middle.abs().max()) - 0.5) < 0.01  # amplitude kept in the pass band


def test_downsampling_removes_what_would_alias() -> None:
    tone = torch.from_numpy(sine(10000.0, 44100)).float()  # above the 8 kHz Nyquist of 16 kHz
    out = resample(tone, 44100, 16000)
    assert float(out[100:-100].abs().max()) < 0.01  # a naive decimation would leave a 6 kHz alias at 0.5


def test_resample_keeps_leading_dimensions_and_dc() -> None:
    out = resample(torch.ones(2, 3, 1000), 48000, 16000)
    assert out.shape == (2, 3, 334)
    torch.testing.assert_close(out[..., 20:-20], torch.ones(2, 3, 294), atol=1e-3, rtol=0)
    assert resample(torch.ones(2, 0), 8000, 16000).shape == (2, 0)
    with pytest.raises(ConfigError, match="orig_rate"):
        resample(torch.ones(10), 0, 16000)


def test_mel_filterbank_shape_and_peaks_rise_with_frequency() -> None:
    filters = mel_filterbank(sample_rate=16000, n_fft=400, n_mels=40)
    assert filters.shape == (40, 201) and float(filters.min()) >= 0 and float(filters.max()) <= 1
    assert bool((filters.sum(dim=1) > 0).all())  # no empty band
    assert filters.argmax(dim=1).diff().ge(0).all()


@pytest.mark.parametrize("frequency", [300.0, 1000.0, 4000.0])
def test_log_mel_of_a_pure_tone_peaks_in_the_band_centred_on_it(frequency: float) -> None:
    sample_rate, n_mels = 16000, 64
    mel = torch.linspace(0, 2595 * math.log10(1 + 8000 / 700), n_mels + 2)
    centers = 700 * (10 ** (mel[1:-1] / 2595) - 1)
    expected = int((centers - frequency).abs().argmin())
    features = log_mel_spectrogram(torch.from_numpy(sine(frequency, sample_rate)).float(), sample_rate=sample_rate)
    assert features.shape == (n_mels, 1 + sample_rate // 160)
    assert int(features.mean(dim=-1).argmax()) == expected


@pytest.fixture
def audio_root(tmp_path: Path) -> Path:
    """root/high: 2 kHz tones, root/low: 250 Hz tones, at several rates, lengths, widths and channel counts."""
    root = tmp_path / "audio"
    write_wav(root / "low" / "a.wav", sine(250, 16000, seconds=0.3), 16000)
    write_wav(root / "low" / "b.wav", np.stack([sine(250, 8000, 1.0)] * 2, axis=1), 8000, width=3)
    write_wav(root / "high" / "a.wav", sine(2000, 22050, seconds=0.5), 22050, width=4)
    write_wav(root / "high" / "b.wav", sine(2000, 16000, seconds=0.8), 16000, width=1)
    return root


def test_audio_folder_waveforms_are_fixed_length_and_labelled(audio_root: Path) -> None:
    dataset = AudioFolder(audio_root, sample_rate=16000, duration=0.5)
    assert dataset.classes == ["high", "low"] and len(dataset) == 4
    batches = list(make_loader(dataset, 3, shuffle=True, seed=0, num_workers=0).epoch(0))
    assert [tuple(x.shape) for x, _ in batches] == [(3, 1, 8000), (1, 1, 8000)]
    for xs, ys in batches:
        for x, y in zip(xs, ys, strict=True):
            voiced = x[0, : int(np.count_nonzero(x[0].numpy()))]
            assert peak_frequency(voiced, 16000) == pytest.approx(2000 if y == 0 else 250, abs=40)
    short = dataset[dataset.samples.index((str(audio_root / "low" / "a.wav"), 1))][0]
    assert bool((short[0, 4800:] == 0).all()) and float(short[0, :4700].abs().max()) > 0.4  # 0.3 s + zero padding


def test_audio_folder_log_mel_batches_and_batch_transform(audio_root: Path) -> None:
    dataset = AudioFolder(audio_root, duration=1.0, features="log_mel", n_mels=32, batch_transform=GaussianNoise(0.5))
    x, y = next(iter(make_loader(dataset, 4, shuffle=False, num_workers=0).epoch(0)))
    assert x.shape == (4, 1, 32, 101) and y.tolist() == [0, 0, 1, 1]
    clean = torch.stack([dataset[i][0] for i in range(4)])
    assert 0.4 < float((x - clean).std()) < 0.6  # noise added to the batch, after collate


def test_audio_folder_to_memory_and_empty_files(audio_root: Path) -> None:
    write_wav(audio_root / "low" / "silent.wav", np.zeros((0, 2)), 8000)  # no frames: all padding
    memory = AudioFolder(audio_root, duration=0.25).to_memory()
    assert isinstance(memory, ArrayDataset) and inputs(memory).shape == (5, 1, 4000)
    assert bool((inputs(memory)[-1] == 0).all())
    assert memory.classes == ["high", "low"]


def test_audio_folder_errors(audio_root: Path) -> None:
    (audio_root / "low" / "c.wav").write_bytes(b"RIFF")
    dataset = AudioFolder(audio_root, duration=0.5)
    with pytest.raises(DataError, match=r"c\.wav"):
        list(make_loader(dataset, 8, shuffle=False, num_workers=0).epoch(0))
    with pytest.raises(ConfigError, match="features"):
        AudioFolder(audio_root, duration=1.0, features="mfcc")
    with pytest.raises(ConfigError, match="duration"):
        AudioFolder(audio_root, duration=0)
    with pytest.raises(DataError, match="no class subfolders"):
        AudioFolder(audio_root / "low", duration=1.0)
