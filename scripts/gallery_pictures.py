"""Regenerate the pictures of the example gallery (docs/images/gallery/): each made by its example, as its page says.

    .venv/bin/python scripts/gallery_pictures.py                     # all of them, into docs/images/gallery/
    .venv/bin/python scripts/gallery_pictures.py keywords --out /tmp/pictures

shapes, gan and gradients run their example with the settings their page shows (into a scratch store, without
serving); keywords draws what the keyword-spotting model sees: one recording of each word made by the example's
own espeak-ng voices (or its tone stand-in without espeak-ng), as the log-mel spectrogram its first layer computes.
Look at each picture before you commit it, and update the output its page shows when the numbers in it changed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# picture -> the example and the arguments its page shows; "{out}" is the picture's path
RUNS = {
    "shapes": ("image_folder.py", "shapes_augmentation.png", ["--epochs", "8", "--samples", "{out}"]),
    "gan": ("gan.py", "gan.png", ["--epochs", "30", "--plot", "{out}"]),
    "gradients": ("gradients.py", "gradients.png", ["--epochs", "10", "--plot", "{out}"]),
}
KEYWORDS = "keyword_spectrograms.png"


def run_example(script: str, args: list[str], out: Path, scratch: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "KILN_HOME": str(scratch)}
    command = [sys.executable, str(EXAMPLES / script), *(arg.format(out=out) for arg in args), "--no-serve"]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=scratch, env=env, check=True)


def keyword_spectrograms(out: Path, scratch: Path) -> None:
    """One recording of each keyword, as the model's first layer sees it: 32 log-mel bands over one second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sys.path.insert(0, str(EXAMPLES))
    import keyword_spotting as example  # the example's own recordings and front end

    from kiln.data import AudioFolder, log_mel_spectrogram

    root = example.make_recordings(scratch / "keywords", per_word=5, seed=0)
    folder = AudioFolder(root / "train", duration=1.0, sample_rate=example.SAMPLE_RATE)
    figure, axes = plt.subplots(2, 5, figsize=(12, 4.6), sharex=True, sharey=True, layout="constrained")
    for word, axis in zip(example.WORDS, axes.flat, strict=True):
        waveform = folder.load(next((root / "train" / word).glob("*.wav")))  # (1, 8000) at 8 kHz, as served
        mel = log_mel_spectrogram(waveform[0], sample_rate=example.SAMPLE_RATE, n_mels=32, n_fft=256, hop_length=128)
        image = axis.imshow(mel.numpy(), origin="lower", aspect="auto", extent=(0, 1, 0, 32), vmin=-14, vmax=4)
        axis.set_title(f'"{word}"')
    for axis in axes[:, 0]:
        axis.set_ylabel("mel band")
    for axis in axes[-1]:
        axis.set_xlabel("seconds")
    figure.colorbar(image, ax=axes, label="log power", shrink=0.8)
    voice = "espeak-ng" if shutil.which("espeak-ng") else "the tone stand-in"
    figure.suptitle(f"What the keyword model sees: log-mel spectrograms of one recording per word ({voice})")
    figure.savefig(out, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pictures", nargs="*", metavar="PICTURE", help=f"any of {', '.join([*RUNS, 'keywords'])}")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "gallery", help="folder to write to")
    args = parser.parse_args()
    unknown = [name for name in args.pictures if name not in [*RUNS, "keywords"]]
    if unknown:
        parser.error(f"no picture named {', '.join(unknown)}: choose from {', '.join([*RUNS, 'keywords'])}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.pictures or [*RUNS, "keywords"]:
        with tempfile.TemporaryDirectory(prefix=f"kiln-pictures-{name}-") as scratch:
            if name == "keywords":
                keyword_spectrograms(args.out / KEYWORDS, Path(scratch))
                print(f"wrote {args.out / KEYWORDS}")
            else:
                script, picture, run_args = RUNS[name]
                run_example(script, run_args, args.out / picture, Path(scratch))
                print(f"wrote {args.out / picture}")


if __name__ == "__main__":
    main()
