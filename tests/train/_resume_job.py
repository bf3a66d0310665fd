"""A deterministic training job for the resume tests, run as a real subprocess (and SIGKILLed by them).

Data is in memory (kiln's batch path) or a folder of PNG files (ImageFolder through DataLoader workers).

Writes one JSON line per batch ({"step", "loss"}) to --log, flushed at once, and the final weights to --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_model
from torch import nn

import kiln
from kiln.data import ArrayDataset, ImageFolder


class StepLog(kiln.Callback):
    def __init__(self, path: Path) -> None:
        self.handle = path.open("a")

    def on_train_batch_end(self, model, step, loss):
        self.handle.write(json.dumps({"step": step, "loss": float(loss).hex()}) + "\n")
        self.handle.flush()

    def on_fit_end(self, model):
        self.handle.close()


def data(kind: str, root: Path):
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(320, 16, generator=generator), torch.randint(0, 4, (320,), generator=generator)
    if kind == "memory":
        return ArrayDataset(x, y)
    # A real file source read by DataLoader workers: 4x4 grayscale PNGs in one folder per class.
    folder = root / "images"
    if not folder.exists():
        from PIL import Image

        pixels = (torch.sigmoid(x) * 255).round().to(torch.uint8).reshape(-1, 4, 4).numpy()
        for i, (image, label) in enumerate(zip(pixels, y.tolist(), strict=True)):
            (folder / f"class{label}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(folder / f"class{label}" / f"{i:04d}.png")
    return ImageFolder(folder, grayscale=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", choices=["memory", "files"], required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    # Dropout draws from the global RNG, so the test also checks that RNG state is restored exactly.
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 4))
    model = kiln.Model(net, loss="cross_entropy", lr=1e-2, metrics=["accuracy"])
    extra = {} if args.checkpoint is None else {"checkpoint": args.checkpoint, "checkpoint_every": 1,
                                                "resume": "latest"}
    model.fit(data(args.data, args.root), epochs=3, batch_size=16, validation=data("memory", args.root),
              lr_schedule="cosine", seed=7, num_workers=1, callbacks=[StepLog(args.log)], verbose=0, **extra)
    save_model(model.module, str(args.out))


if __name__ == "__main__":
    main()
