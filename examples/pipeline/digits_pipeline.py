"""The digits model and data named by job.toml: a small CNN and scikit-learn's bundled 8x8 digits (no download).

job.toml names ``digits_pipeline:cnn`` and ``digits_pipeline:data``; kiln finds this file through the job's
``job.python_path`` (the config's own folder) and trusts it because your own config names it.
"""

from __future__ import annotations

from sklearn.datasets import load_digits
from torch import nn

from kiln.data import ArrayDataset


def cnn(channels: int = 16, classes: int = 10) -> nn.Module:
    """A small CNN for (B, 1, 8, 8) images."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),  # (B, C, 8, 8)
        nn.MaxPool2d(2),  # (B, C, 4, 4)
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU(),  # (B, 2C, 4, 4)
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (B, 2C)
        nn.Linear(2 * channels, classes),  # (B, classes)
    )  # fmt: skip


def data() -> ArrayDataset:
    """All 1797 digits as (N, 1, 8, 8) float32 pixels in [0, 1] with their labels; job.toml's [split] splits them."""
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[:, None]  # (N, 1, 8, 8)
    return ArrayDataset(x, digits.target, classes=[str(c) for c in range(10)])
