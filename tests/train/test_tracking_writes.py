"""What a tracked fit costs the training loop: store transactions at epoch ends and at the end, none per step.

benchmarks/train_overhead.py (track:*) measures the cost; the one store transaction per epoch end is nearly all of
it, so these tests count transactions on the store's real engine: a tracker that starts writing per step, or twice
per epoch, fails here rather than in a benchmark nobody runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from torch import nn

import kiln
from kiln.data import ArrayDataset
from kiln.store import Store
from kiln.train.tracking import TrackingCallback


@pytest.fixture
def data(digits: tuple[np.ndarray, np.ndarray]) -> tuple[ArrayDataset, ArrayDataset]:
    x, y = digits
    return ArrayDataset(x[:640], y[:640]).split(0.75, seed=0)  # 480 train rows: 8 steps of 64 per epoch


class _Commits(kiln.Callback):
    """Counts the transactions committed on ``store``'s engine, read after each batch and each epoch end.

    Put after the tracking callback, so each reading includes what the tracker did in that hook.
    """

    def __init__(self, store: Store) -> None:
        self.count = 0
        self.after_batches: list[list[int]] = []  # per epoch: the count after each of its batches
        self.after_epoch_ends: list[int] = []
        sa.event.listen(store.database.engine, "commit", self._committed)

    def _committed(self, connection: Any) -> None:
        self.count += 1

    def on_epoch_start(self, model: Any, epoch: int) -> None:
        self.after_batches.append([])

    def on_train_batch_end(self, model: Any, step: int, loss: torch.Tensor) -> None:
        self.after_batches[-1].append(self.count)

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        self.after_epoch_ends.append(self.count)


def test_a_tracked_fit_writes_once_per_epoch_end_and_never_per_step(
    tmp_path: Path, data: tuple[ArrayDataset, ArrayDataset]
) -> None:
    store = Store(tmp_path / "store")
    commits = _Commits(store)
    torch.manual_seed(0)
    model = kiln.Model(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), loss="cross_entropy",
                       lr=1e-2, device="cpu")  # fmt: skip
    tracking = TrackingCallback(store, "r", every=1)  # a batch loss sampled at every step: still no write per step
    model.fit(data[0], epochs=3, batch_size=64, validation=data[1], callbacks=[tracking, commits], verbose=0,
              doctor=False)  # fmt: skip
    assert [len(batches) for batches in commits.after_batches] == [8, 8, 8]
    for epoch, batches in enumerate(commits.after_batches):
        assert len(set(batches)) == 1, f"epoch {epoch}: the store was written during the steps: {batches}"
        assert commits.after_epoch_ends[epoch] == batches[-1] + 1  # one transaction at the epoch's end
        if epoch:
            assert batches[0] == commits.after_epoch_ends[epoch - 1]  # and none between epochs
    assert commits.count == commits.after_epoch_ends[-1] + 1  # the end: one transaction (rows and status)
    run = store.run(model.run_id)
    assert run.status == "finished"
    assert len(store.metrics(run.id)["batch_loss"]) == 24  # all of it recorded
