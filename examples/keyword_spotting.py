"""Speech: keyword spotting on WAV files, the log-mel front end inside the model, served WAV in and keyword out.

Ten words ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go") spoken by the espeak-ng speech
synthesiser (`apt-get install espeak-ng`; `scripts/setup.sh` installs it), 40 utterances each in six voices at
random speeds (110–230 words a minute) and pitches, written as `root/<split>/<word>/<n>.wav` and cached (`--cache`,
by default in `~/.cache/kiln/examples`). Without espeak-ng the script synthesises a stand-in in which each word is
its own three-tone melody, varied the same way. `kiln.data.AudioFolder` decodes the files, resamples them from
22,050 to 8,000 Hz and cuts or pads them to one second.

The model's first step is `kiln.data.log_mel_spectrogram` (`torch.stft` and a mel filterbank: 32 bands, 256-sample
frames every 128 samples), so the exported ONNX graph contains the feature extraction and takes the waveform. The
package declares an `audio` input step (`kiln.export.preprocess`: 8 kHz, mono, 8,000 samples) and a `classes` output
step, and the server applies them on `/v1` and in `kiln predict`: a client sends the WAV file itself (`kiln predict
keywords --file x.wav`, or `curl --data-binary @x.wav -H 'Content-Type: audio/wav'`), the server decodes it as
`kiln.data.read_wav` does (the same decoder, `kiln._wav`), cuts or pads it to one second and answers the keyword under
`"labels"` next to the raw `"outputs"`. It never resamples: a file at another rate is a 400 that names both rates. The
recordings are at 22,050 Hz (16 kHz for the tones), so the script writes the test set once more as 8 kHz 16-bit WAV
files (`keywords_8khz/`, as a telephone line records) and sends those. What the model's first layer makes of one
recording of each word (drawn by `scripts/gallery_pictures.py` with the script's own voices and front end):

![Log-mel spectrograms of one recording of each keyword](docs/images/gallery/keyword_spectrograms.png)

```bash
python examples/keyword_spotting.py --epochs 15
```

```text
recordings: espeak-ng, cached in ~/.cache/kiln/examples/keywords-espeak-ng-40-0
AudioFolder('~/.cache/kiln/examples/keywords-espeak-ng-40-0/train', n=320, classes=10, sample_rate=8000,
            duration=1.0, features='waveform')
AudioFolder('~/.cache/kiln/examples/keywords-espeak-ng-40-0/test', n=80, classes=10, sample_rate=8000,
            duration=1.0, features='waveform')
test accuracy 0.9625  test loss 0.1347
factory __main__:KeywordNet lives in the running script: only that script can load this version with the torch
runtime; move it into an importable module.
registered keywords@1 (run 78353d8000074430bca4e51a2d73d9fd) and promoted it to production

serve it:   kiln serve keywords@production
query it:   kiln predict keywords --file keywords_8khz/000_down.wav
            # or: curl -s localhost:8000/v1/models/keywords:predict --data-binary @keywords_8khz/000_down.wav
            #       -H 'Content-Type: audio/wav'
            keywords_8khz/000_down.wav is test/down/0004.wav at 8 kHz: the server decodes it
  down   <- keywords_8khz/000_down.wav
  left   <- keywords_8khz/016_left.wav
  off    <- keywords_8khz/032_off.wav
  right  <- keywords_8khz/048_right.wav
  up     <- keywords_8khz/064_up.wav
served keywords@production: 80 WAV files sent as they are over HTTP, accuracy 0.9625, agreement with the
in-process model 1.0000
```

With the tone stand-in (no espeak-ng, `--per-word 25 --epochs 10`) the test accuracy was 0.88.

Tested: `tests/gallery/test_keyword_spotting.py` runs it with `--epochs 10 --per-word 25` and requires a test
accuracy of at least 0.8 (chance is a tenth), with espeak-ng where it is installed and the tones where it is not,
the 50 test WAV files, written at 8000 Hz, sent as they are over HTTP and labelled with at least 0.8 and an agreement
of 1.0 with the model in memory, and the `kiln predict --file` command printed.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import torch
from serving import example_parser, promote, served, show_file_commands
from torch import nn

import kiln
import kiln.store
from kiln.data import AudioFolder, log_mel_spectrogram, read_wav

NAME = "keywords"
WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-us+f3", "en-gb+m3")
SAMPLE_RATE = 8000  # Hz: speech below 4 kHz is enough to tell these words apart


def speak(word: str, path: Path, rng: random.Random) -> None:
    """One utterance of ``word`` by espeak-ng, in a random voice, speed (words per minute) and pitch."""
    voice, speed, pitch = rng.choice(VOICES), rng.randrange(110, 230), rng.randrange(15, 85)
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), word],
                   check=True, capture_output=True)  # fmt: skip


def hum(word: str, path: Path, rng: random.Random) -> None:
    """The stand-in without espeak-ng: three tones per word (its own melody), at a random speed and pitch."""
    rate = 16000
    base = 220.0 * 2 ** (WORDS.index(word) / len(WORDS))  # Hz
    melody = [base * 2 ** (step / 12) for step in ((0, 7, 4), (0, 4, 9), (12, 7, 0))[WORDS.index(word) % 3]]
    speed, pitch = rng.uniform(0.7, 1.3), rng.uniform(0.9, 1.1)
    pieces = [np.zeros(int(rate * rng.uniform(0.02, 0.15)))]
    for frequency in melody:
        t = np.arange(int(rate * 0.18 * speed)) / rate
        pieces.append(0.5 * np.sin(2 * math.pi * frequency * pitch * t) * np.hanning(len(t)))
    samples = np.concatenate(pieces) + np.random.default_rng(rng.randrange(2**32)).normal(
        0, 0.01, sum(map(len, pieces))
    )
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def make_recordings(root: Path, *, per_word: int, seed: int) -> Path:
    """``per_word`` WAV files of each keyword, 80% under root/train, 20% under root/test; made once, then reused."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root
    voice = speak if shutil.which("espeak-ng") else hum
    rng = random.Random(seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))  # renamed into place when complete
    for word in WORDS:
        for i in range(per_word):
            folder = partial / ("test" if i % 5 == 4 else "train") / word
            folder.mkdir(parents=True, exist_ok=True)
            voice(word, folder / f"{i:04d}.wav", rng)
    try:
        partial.rename(root)
    except OSError:  # another process made the same recordings first
        shutil.rmtree(partial)
    return root


class KeywordNet(nn.Module):
    """Waveform (B, 1, T) at 8 kHz -> log-mel spectrogram (B, 1, n_mels, frames) -> CNN -> (B, words)."""

    def __init__(self, words: int = len(WORDS), n_mels: int = 32, hop_length: int = 128, channels: int = 8) -> None:
        super().__init__()
        self.n_mels, self.hop_length = n_mels, hop_length
        c = channels
        self.cnn = nn.Sequential(
            nn.BatchNorm2d(1),  # log-mel values centred and scaled with statistics learned in training
            nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),  # (B, C, 16, 31)
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d(2),  # (B, 2C, 8, 15)
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),  # (B, 2C, 8, 15)
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),  # (B, 2C)
            nn.Linear(2 * c, words),
        )  # fmt: skip

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        features = log_mel_spectrogram(
            waveform, sample_rate=SAMPLE_RATE, n_mels=self.n_mels, n_fft=256, hop_length=self.hop_length
        )  # (B, 1, n_mels, 1 + T // hop_length)
        return self.cnn(features)


def main() -> None:
    parser = example_parser(__doc__, __file__)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--per-word", type=int, default=40, help="recordings of each keyword (a fifth for testing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None, help="where the WAV files go (default: ~/.cache/kiln)")
    parser.add_argument("--no-serve", action="store_true", help="register only; do not start a server")
    args = parser.parse_args()

    source = "espeak-ng" if shutil.which("espeak-ng") else "tones"
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kiln" / "examples"
    root = args.cache or home / f"keywords-{source}-{args.per_word}-{args.seed}"
    make_recordings(root, per_word=args.per_word, seed=args.seed)
    print(f"recordings: {source}, cached in {root}")
    train_folder = AudioFolder(root / "train", duration=1.0, sample_rate=SAMPLE_RATE)
    test_folder = AudioFolder(root / "test", duration=1.0, sample_rate=SAMPLE_RATE, classes=train_folder.classes)
    print(f"{train_folder}\n{test_folder}")
    train, test = train_folder.to_memory(), test_folder.to_memory()  # waveforms (N, 1, 8000), decoded once

    torch.manual_seed(args.seed)
    model = kiln.Model(KeywordNet(), loss="cross_entropy", optimizer="adamw", lr=3e-3, metrics=["accuracy"],
                       store=kiln.store.Store())  # fmt: skip
    model.fit(train, epochs=args.epochs, batch_size=32, validation=test, seed=args.seed, run="keywords-cnn", verbose=0)
    result = model.evaluate(test)
    print(f"test accuracy {result['accuracy']:.4f}  test loss {result['loss']:.4f}")

    preprocessing = {  # what the server does with a request: a WAV file in, the keyword out (kiln.export.preprocess)
        "format": "kiln.preprocessing/1",
        "input": {"type": "audio", "sample_rate": SAMPLE_RATE, "channels": 1, "samples": SAMPLE_RATE,
                  "layout": "CT"},  # 8 kHz mono PCM, cut or zero-padded to one second -> (1, 8000) float32
        "output": {"type": "classes", "names": train_folder.classes},  # answers carry "labels" next to the logits
    }  # fmt: skip
    version = model.register(
        NAME,
        preprocessing=preprocessing,
        example_input=test.x[:1],
        description=f"keyword spotting on {source} recordings; WAV in, log-mel inside, keyword out",
    )
    promote(version, model.run_id)

    # The server takes 8 kHz WAV files as they are and does not resample; the recordings are at 22,050 Hz (espeak-ng)
    # or 16 kHz (tones), so the test set is written once more as 8 kHz 16-bit WAV files, as a telephone line records.
    files = [Path(path) for path, _ in test_folder.samples]
    phone = Path("keywords_8khz")
    phone.mkdir(exist_ok=True)
    wavs = [write_wav(phone / f"{i:03d}_{path.parent.name}.wav", test_folder.load(path)[0].numpy())
            for i, path in enumerate(files)]  # fmt: skip
    show_file_commands(f"{NAME}@production", wavs[0], "audio/wav",
                       note=f"{wavs[0]} is {files[0].relative_to(root)} at 8 kHz: the server decodes it")  # fmt: skip
    if args.no_serve:
        return
    # in process, the samples the server decodes from those files (kiln.data.read_wav and the server share a decoder)
    expected = model.predict(torch.stack([torch.from_numpy(read_wav(w)[0])[None] for w in wavs])).argmax(-1)
    with served(f"{NAME}@production") as client:
        labels = [client.answer(NAME, data=w.read_bytes(), content_type="audio/wav")["labels"] for w in wavs]
    for wav, label in list(zip(wavs, labels, strict=True))[:: max(1, len(wavs) // 5)]:
        print(f"  {label:<6} <- {wav}")
    truth = [train_folder.classes[i] for i in test.y.tolist()]
    accuracy = float(np.mean([a == b for a, b in zip(labels, truth, strict=True)]))
    agree = float(np.mean([a == train_folder.classes[b] for a, b in zip(labels, expected.tolist(), strict=True)]))
    print(f"served {NAME}@production: {len(wavs)} WAV files sent as they are over HTTP, accuracy {accuracy:.4f}, "
          f"agreement with the in-process model {agree:.4f}")  # fmt: skip


def write_wav(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    """``samples`` (T,) in [-1, 1] as a mono 16-bit PCM WAV file."""
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes((np.clip(samples, -1, 1) * 32767).round().astype("<i2").tobytes())
    return path


if __name__ == "__main__":
    main()
