"""fit(run=...) records a run in the store; Model.register publishes a package that loads back to the same model."""

from __future__ import annotations

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
