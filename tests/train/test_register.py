"""fit(run=...) records a run in the store; Model.register publishes a package that loads back to the same model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kiln
from kiln.data import ArrayDataset
from kiln.export import load
from kiln.store import Store


def test_fit_records_run_and_register_round_trips(tmp_path, digits):
    store = Store(tmp_path / "store")
    train, test = ArrayDataset(*digits).split(0.8, seed=0)
    torch.manual_seed(0)
    model = kiln.Model(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)), loss="cross_entropy",
                       metrics=["accuracy"], store=store)
    model.fit(train, epochs=3, validation=test, run="digits-mlp", verbose=0)
    assert model.run_id is not None and model.data_fingerprint is not None
    version = model.register("digits", description="test")
    assert version.version == 1 and version.run_id == model.run_id
    assert version.metrics["val_accuracy"] == model.history["val_accuracy"][-1]
    assert version.signature["inputs"][0]["shape"] == [None, 64]
    loaded = load("digits@1", store=store, runtime="torch")
    with torch.no_grad():
        torch.testing.assert_close(loaded(test.x[:32]), model.predict(test.x[:32]))


def test_register_after_early_stopping_restores_best_records_the_best_epochs_metrics(tmp_path):
    store = Store(tmp_path / "store")
    x, y = torch.randn(128, 6, generator=torch.Generator().manual_seed(0)), torch.randint(0, 3, (128,))
    torch.manual_seed(0)
    model = kiln.Model(nn.Linear(6, 3), loss="cross_entropy", optimizer="sgd", lr=50.0, store=store)
    stopper = kiln.EarlyStopping("val_loss", patience=2, restore_best=True)  # lr 50: val_loss climbs after a while
    history = model.fit((x, y), epochs=50, batch_size=64, validation=(x, y), callbacks=[stopper], verbose=0)
    assert stopper.stopped_epoch is not None and stopper.best_epoch is not None
    best = history.epochs.index(stopper.best_epoch)
    assert best != len(history.epochs) - 1  # the restored weights are not the last epoch's
    version = model.register("linear", example_input=x[:1])
    assert version.metrics["val_loss"] == history["val_loss"][best] == min(history["val_loss"])
    assert version.metrics["loss"] == history["loss"][best]
    assert model.evaluate((x, y))["loss"] == pytest.approx(version.metrics["val_loss"], rel=1e-5)  # the same weights
