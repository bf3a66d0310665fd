"""Factories the job tests name in their configs (found through job.python_path = this folder)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from kiln.data import ArrayDataset


def mlp(hidden: int = 32, classes: int = 10) -> nn.Module:
    """A small MLP for (B, 64) digits."""
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, classes))  # (B, classes)


def digits() -> ArrayDataset:
    from sklearn.datasets import load_digits

    data = load_digits()
    return ArrayDataset((data.data / 16.0).astype("float32"), data.target)


class Pausing(nn.Module):
    """An MLP whose training forward, on its ``pause_at``-th call, writes a marker file and waits to be killed.

    Set by the environment (KILN_TEST_PAUSE_AT, KILN_TEST_PAUSE_FILE) so the config, and so the pipeline's hash,
    is the same for the interrupted run and the uninterrupted one; the arithmetic is the MLP's either way.
    """

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = mlp(hidden)
        self.calls = 0
        self.pause_at = int(os.environ.get("KILN_TEST_PAUSE_AT", "0"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == self.pause_at:
                Path(os.environ["KILN_TEST_PAUSE_FILE"]).write_text(str(self.calls))
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:  # the test kills this process here
                    time.sleep(0.05)
                raise RuntimeError("the test did not kill the paused training within 120 s")
        return self.net(x)


def pausing(hidden: int = 32) -> nn.Module:
    return Pausing(hidden)
