"""A tiny, fast task for tuning tests: a linearly separable two-class problem and an objective that trains an MLP."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import kiln
from kiln.data import ArrayDataset


def data(seed: int = 0, rows: int = 256) -> tuple[ArrayDataset, ArrayDataset]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 8, generator=generator)  # (N, 8)
    y = (x @ torch.linspace(-1, 1, 8) > 0).long()  # (N,)
    return ArrayDataset(x, y).split(0.75, seed=seed)


TRAIN, VAL = data()


def _setup(params: dict[str, Any], metrics: list[str]) -> tuple[Any, ...]:
    width = int(params.get("width", 16))
    net = nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 2))  # (B, 2)
    model = kiln.Model(
        net, loss="cross_entropy", optimizer=params.get("optimizer", "adamw"), lr=params["lr"], metrics=metrics
    )
    return model, TRAIN, VAL, {"epochs": int(params.get("epochs", 3)), "batch_size": 64, "doctor": False}


def objective(params: dict[str, Any]) -> tuple[Any, ...]:
    """lr, and optionally width, optimizer, epochs -> a Model on the tiny task (logs loss and val_loss)."""
    return _setup(params, [])


def accuracy_objective(params: dict[str, Any]) -> tuple[Any, ...]:
    """As :func:`objective`, with val_accuracy logged too."""
    return _setup(params, ["accuracy"])
