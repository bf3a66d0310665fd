"""The learning-rate range test: exact restore, early stop on divergence, a suggestion that trains well, tracking."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import kiln
from kiln.data import ArrayDataset
from kiln.errors import ConfigError
from kiln.store import Store


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 10))


def _splits(digits: tuple[np.ndarray, np.ndarray]) -> tuple[ArrayDataset, ArrayDataset]:
    return ArrayDataset(*digits).split(0.8, seed=0)


def _snapshot(model: kiln.Model) -> dict[str, Any]:
    return {
        "module": {k: v.clone() for k, v in model.module.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.module.parameters()],
        "modes": [m.training for m in model.module.modules()],
        "optimizer": _clone(model.optimizer.state_dict()),
        "rng": torch.get_rng_state(),
    }


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_clone(v) for v in value)
    return value


def _same(a: Any, b: Any) -> bool:
    """Bitwise equality of nested state (tensors compared by dtype, shape and every bit)."""
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_find_lr_restores_model_and_optimizer_bitwise(digits: tuple[np.ndarray, np.ndarray]) -> None:
    train, _ = _splits(digits)
    model, twin = (kiln.Model(_net(), loss="cross_entropy", optimizer="adamw", lr=1e-3) for _ in range(2))
    for m in (model, twin):  # the same history for both: the optimizer has state, gradients are present
        m.fit(train, epochs=1, batch_size=64, seed=0, verbose=0, doctor=False)
        torch.manual_seed(3)
        m.loss(m.module(train.x[:8]), train.y[:8]).backward()
        m.module.eval()
    before = _snapshot(model)

    result = model.find_lr(train, start=1e-6, end=10, steps=40)

    assert len(result.lrs) == len(result.losses) == len(result.smoothed) > 5
    after = _snapshot(model)
    for key in before:
        assert _same(before[key], after[key]), key
    assert model.optimizer.param_groups[0]["lr"] == 1e-3

    # Nothing a later fit depends on changed: the same fit from here gives the twin's weights (which saw no test).
    for m in (model, twin):
        m.fit(train, epochs=1, batch_size=64, seed=1, verbose=0, doctor=False)
    assert _same(model.module.state_dict(), twin.module.state_dict())


def test_find_lr_stops_early_when_the_loss_diverges(digits: tuple[np.ndarray, np.ndarray]) -> None:
    train, _ = _splits(digits)
    model = kiln.Model(_net(), loss="cross_entropy", optimizer="sgd", lr=0.1, optimizer_options={"momentum": 0.9})
    result = model.find_lr(train, start=1e-4, end=1e4, steps=100)
    assert result.diverged and len(result.lrs) < 100
    finite = [s for s in result.smoothed if math.isfinite(s)]
    assert not math.isfinite(result.losses[-1]) or result.smoothed[-1] > 4 * min(finite)
    assert result.lrs[0] == pytest.approx(1e-4) and result.suggestion < result.lrs[-1]
    assert result.suggestion == min(result.steepest, result.minimum_tenth)


def test_the_suggested_lr_trains_within_one_percent_of_the_best_of_a_grid(
    digits: tuple[np.ndarray, np.ndarray],
) -> None:
    train, test = _splits(digits)

    def accuracy(lr: float) -> float:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        model = kiln.Model(
            net, loss="cross_entropy", optimizer="sgd", lr=lr, optimizer_options={"momentum": 0.9}, metrics=["accuracy"]
        )
        model.fit(train, epochs=5, batch_size=32, seed=0, verbose=0, doctor=False)
        return model.evaluate(test)["accuracy"]

    torch.manual_seed(0)
    probe = kiln.Model(
        nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)),
        loss="cross_entropy",
        optimizer="sgd",
        lr=0.1,
        optimizer_options={"momentum": 0.9},
    )
    result = probe.find_lr(train, start=1e-7, end=10, steps=100)
    grid = {lr: accuracy(lr) for lr in (1e-3, 1e-2, 1e-1, 1.0)}
    best = max(grid.values())
    suggested = accuracy(result.suggestion)
    assert suggested >= best - 0.01, (result.suggestion, suggested, grid)


def test_find_lr_records_the_curve_as_a_run_and_plots_it(digits: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    train, _ = _splits(digits)
    store = Store(tmp_path / "store")
    model = kiln.Model(_net(), loss="cross_entropy", optimizer="adamw", lr=1e-3, store=store)
    result = model.find_lr(train, steps=30, plot=tmp_path / "lr.png")
    assert (tmp_path / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.figure is not None and result.run_id is not None
    run = store.run(result.run_id)
    assert run.status == "finished" and run.tags == {"kind": "lr_find"} and run.name == "sequential-lr-find"
    assert "lr_find.png" in run.artifacts
    series = store.metrics(result.run_id)
    assert [value for _, value in series["lr"]] == pytest.approx(result.lrs)
    assert [value for _, value in series["loss"]] == pytest.approx(result.losses)
    assert len(series["smoothed_loss"]) == len(result.lrs)
    assert run.latest["suggested_lr"] == pytest.approx(result.suggestion)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"start": 1.0, "end": 1e-3}, "0 < start < end"),
        ({"steps": 2}, "steps must be"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"diverge": 0.5}, "diverge"),
    ],
)
def test_find_lr_refuses_bad_arguments(
    options: dict[str, Any], message: str, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    model = kiln.Model(_net(), loss="cross_entropy")
    with pytest.raises(ConfigError, match=message):
        model.find_lr(_splits(digits)[0], **options)
