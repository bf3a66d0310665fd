"""A deterministic training job for the resume tests, run as a real subprocess (and SIGKILLed by them).

Writes one JSON line per batch ({"step", "loss"}) to --log, flushed at once, and the final weights to --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_model
from torch import nn

import kiln
from kiln.data import ArrayDataset


class NpyFiles(torch.utils.data.Dataset):
    """A file source: one .npy file per sample, read by DataLoader workers."""

    def __init__(self, root: Path) -> None:
        self.files = sorted(root.glob("*.npy"))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row = np.load(self.files[index], allow_pickle=False)
        return torch.from_numpy(row[:-1].astype(np.float32)), int(row[-1])


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
    files = root / "files"
    if not files.exists():
        files.mkdir()
        for i, row in enumerate(torch.cat([x, y[:, None].float()], 1).numpy()):
            np.save(files / f"{i:04d}.npy", row)
    return NpyFiles(files)


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
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 4))  # dropout uses the RNG
    model = kiln.Model(net, loss="cross_entropy", lr=1e-2, metrics=["accuracy"])
    extra = {} if args.checkpoint is None else {"checkpoint": args.checkpoint, "checkpoint_every": 1,
                                                "resume": "latest"}
    model.fit(data(args.data, args.root), epochs=3, batch_size=16, validation=data("memory", args.root),
              lr_schedule="cosine", seed=7, num_workers=1, callbacks=[StepLog(args.log)], verbose=0, **extra)
    save_model(model.module, str(args.out))


if __name__ == "__main__":
    main()
