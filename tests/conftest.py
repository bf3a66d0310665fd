"""Shared fixtures: small real datasets and a pinned thread count so tests behave the same on any CI box."""

from __future__ import annotations

import numpy as np
import pytest
import torch

# Two cores in CI: one intra-op thread per test process avoids oversubscription when subprocesses run beside it.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1797 images, no download), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)
