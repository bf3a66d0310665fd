"""kiln's main job: train a small CNN on scikit-learn's bundled digits and report test accuracy.

Real data (1797 8x8 images that ship with scikit-learn), no download. Run it with:

    python examples/digits.py --epochs 15
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn

import kiln
from kiln.data import ArrayDataset


def digits_cnn(channels: int = 32, classes: int = 10) -> nn.Module:
    """A small CNN for 1x8x8 images."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),  # (B, C, 8, 8)
        nn.MaxPool2d(2),  # (B, C, 4, 4)
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU(),  # (B, 2C, 4, 4)
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (B, 2C)
        nn.Linear(2 * channels, classes),
    )


def load_data(seed: int = 0) -> tuple[ArrayDataset, ArrayDataset, ArrayDataset]:
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[:, None]  # (N, 1, 8, 8) in [0, 1]
    data = ArrayDataset(x, digits.target, classes=[str(c) for c in range(10)])
    train, test = data.split(0.8, seed=seed)
    train, val = train.split(0.9, seed=seed)
    return train, val, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train, val, test = load_data(args.seed)
    model = kiln.Model(digits_cnn(), loss="cross_entropy", optimizer="adamw", lr=3e-3, metrics=["accuracy"])
    model.fit(train, epochs=args.epochs, batch_size=64, validation=val, lr_schedule="cosine", seed=args.seed)
    result = model.evaluate(test)
    print(f"test accuracy {result['accuracy']:.4f}  test loss {result['loss']:.4f}")


if __name__ == "__main__":
    main()
