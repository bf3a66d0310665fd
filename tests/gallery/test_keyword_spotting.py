"""examples/keyword_spotting.py: synthesised WAV files -> AudioFolder -> log-mel CNN -> served with WAV files in
and keywords out."""

from __future__ import annotations

import importlib
import random
import re
import shutil
import sys

import numpy as np
import pytest
import torch

from kiln.data import log_mel_spectrogram, read_wav
from test_examples import ROOT, accuracy, run_example


def test_keyword_spotting_trains_on_wav_files_and_serves_waveforms(tmp_path):
    cache = tmp_path / "recordings"
    output = run_example("keyword_spotting.py", "--epochs", "10", "--per-word", "25", "--cache", str(cache),
                         cwd=tmp_path)  # fmt: skip
    assert accuracy(output) >= 0.8  # ten words: chance is 0.1
    source = "espeak-ng" if shutil.which("espeak-ng") else "tones"
    assert f"recordings: {source}, cached in {cache}" in output
    assert len(list((cache / "train").glob("*/*.wav"))) == 200 and len(list((cache / "test").glob("*/*.wav"))) == 50
    served = re.search(r"served keywords@production: 50 WAV files sent as they are over HTTP, accuracy ([0-9.]+), "
                       r"agreement with the in-process model ([0-9.]+)", output)  # fmt: skip
    assert served, output
    assert float(served.group(1)) >= 0.8 and float(served.group(2)) == 1.0  # labels of raw WAV files, served
    sent = sorted((tmp_path / "keywords_8khz").glob("*.wav"))
    assert len(sent) == 50 and all(read_wav(path)[1] == 8000 for path in sent)  # the files the server decoded
    assert f"kiln predict keywords --file {sent[0].relative_to(tmp_path)}" in output
    assert re.search(r"^  (yes|no|up|down|left|right|on|off|stop|go) +<- keywords_8khz/", output, re.MULTILINE)


@pytest.fixture
def keyword_spotting(monkeypatch):
    """The example script as a module (its functions, without running main)."""
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    monkeypatch.delitem(sys.modules, "keyword_spotting", raising=False)
    return importlib.import_module("keyword_spotting")


def test_without_espeak_ng_each_keyword_is_its_own_tone_melody(tmp_path, keyword_spotting):
    rng = random.Random(0)
    features = {}
    for word in ("yes", "no"):
        path = tmp_path / f"{word}.wav"
        keyword_spotting.hum(word, path, rng)
        samples, rate = read_wav(path)
        assert rate == 16000 and 0.5 < len(samples) / rate < 1.0 and np.abs(samples).max() <= 1.0
        mel = log_mel_spectrogram(torch.from_numpy(samples), sample_rate=rate, n_mels=32)  # (32, frames)
        features[word] = mel.max(dim=1).values  # (32,): the loudest band energies over time
    assert not np.allclose(features["yes"].numpy(), features["no"].numpy(), atol=1.0)


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (scripts/setup.sh installs it)"
)
def test_espeak_ng_utterances_are_short_speech(tmp_path, keyword_spotting):
    keyword_spotting.speak("stop", tmp_path / "stop.wav", random.Random(0))
    samples, rate = read_wav(tmp_path / "stop.wav")
    assert rate == 22050 and 0.2 < len(samples) / rate < 1.5 and np.abs(samples).max() > 0.05
