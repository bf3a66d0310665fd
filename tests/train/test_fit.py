"""Model.fit / evaluate / predict on real data, and equivalence with hand-written torch loops."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import kiln
from kiln.data import ArrayDataset


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 16, 4, 4)
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),  # (B, 32, 4, 4)
        nn.Flatten(), nn.Linear(32 * 16, 10),
    )


@pytest.mark.parametrize("factory", [mlp, small_cnn], ids=["mlp", "cnn"])
def test_digits_reaches_95_percent(digits, factory):
    x, y = digits
    train, test = ArrayDataset(x, y).split(0.8, seed=0)
    torch.manual_seed(0)
    model = kiln.Model(factory(), loss="cross_entropy", optimizer="adamw", lr=2e-3, metrics=["accuracy"])
    history = model.fit(train, epochs=15, batch_size=64, validation=test, seed=0, verbose=0)
    result = model.evaluate(test)
    assert result["accuracy"] >= 0.95, result
    assert history["loss"][-1] < history["loss"][0]
    assert set(history.history) == {"loss", "val_loss", "val_accuracy", "lr"}
    predictions = model.predict(test.x).argmax(-1)
    assert predictions.shape == (len(test),)
    assert (predictions == test.y).float().mean().item() == pytest.approx(result["accuracy"], abs=1e-6)


def test_fit_accepts_numpy_tuple_dataset_and_dataloader(digits):
    x, y = digits[0][:256], digits[1][:256]
    tensors = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    sources = [(x, y), tensors, torch.utils.data.DataLoader(tensors, batch_size=32)]
    for data in sources:
        model = kiln.Model(mlp(), loss="cross_entropy", lr=1e-2)
        history = model.fit(data, epochs=3, batch_size=32, num_workers=0, seed=0, verbose=0)
        assert history["loss"][-1] < history["loss"][0], type(data)
        assert model.global_step == 3 * 8


def test_same_seed_gives_bitwise_identical_runs(digits):
    def run() -> tuple[list[float], torch.Tensor]:
        torch.manual_seed(1)
        model = kiln.Model(mlp(), loss="cross_entropy", lr=1e-3)
        history = model.fit(ArrayDataset(*digits), epochs=2, batch_size=64, seed=3, verbose=0)
        return history["loss"], torch.cat([p.detach().flatten() for p in model.module.parameters()])

    (loss_a, weights_a), (loss_b, weights_b) = run(), run()
    assert loss_a == loss_b
    assert torch.equal(weights_a, weights_b)


def _manual_sgd(module: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], *, accumulate: int,
                clip: float | None) -> nn.Module:
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    for i, (x, y) in enumerate(batches):
        loss = nn.functional.cross_entropy(module(x), y) / accumulate
        loss.backward()
        if (i + 1) % accumulate == 0:
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad()
    return module


@pytest.mark.parametrize(("accumulate", "clip"), [(1, None), (1, 0.05), (4, None), (4, 0.05)])
def test_clipping_and_accumulation_match_manual_torch(digits, accumulate, clip):
    x, y = torch.from_numpy(digits[0][:256]), torch.from_numpy(digits[1][:256])
    torch.manual_seed(0)
    reference = mlp()
    ours = copy.deepcopy(reference)
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 256, 16)]
    _manual_sgd(reference, batches, accumulate=accumulate, clip=clip)
    model = kiln.Model(ours, loss="cross_entropy", optimizer="sgd", lr=0.1)
    model.fit((x, y), epochs=1, batch_size=16, shuffle=False, accumulate=accumulate, clip_grad_norm=clip, verbose=0)
    assert model.global_step == 16 // accumulate
    for expected, got in zip(reference.parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_accumulation_equals_one_big_batch(digits):
    x, y = torch.from_numpy(digits[0][:128]), torch.from_numpy(digits[1][:128])
    torch.manual_seed(0)
    big, small = mlp(), None
    small = copy.deepcopy(big)
    kiln.Model(big, loss="cross_entropy", optimizer="sgd", lr=0.1).fit(
        (x, y), epochs=1, batch_size=64, shuffle=False, verbose=0)
    kiln.Model(small, loss="cross_entropy", optimizer="sgd", lr=0.1).fit(
        (x, y), epochs=1, batch_size=16, shuffle=False, accumulate=4, verbose=0)
    for a, b in zip(big.parameters(), small.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(digits, precision):
    torch.manual_seed(0)
    model = kiln.Model(mlp(), loss="cross_entropy", lr=2e-3, metrics=["accuracy"])
    history = model.fit(ArrayDataset(*digits), epochs=4, batch_size=64, precision=precision, seed=0, verbose=0)
    assert all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0] * 0.5
    if precision == "fp16":
        assert model.precision.scaler is not None and model.precision.scaler.get_scale() > 0
    assert model.evaluate(ArrayDataset(*digits))["accuracy"] > 0.8


def test_graph_mode_trains_and_matches_eager_forward():
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    model = kiln.Model(net, loss="cross_entropy", lr=1e-2)
    history = model.fit((x, y), epochs=3, batch_size=32, mode="graph", seed=0, verbose=0)
    assert history["loss"][-1] < history["loss"][0]
    with torch.no_grad():
        torch.testing.assert_close(model._graph_module()(x), net(x))


def test_sequence_outputs_with_per_token_targets():
    torch.manual_seed(0)
    x, y = torch.randint(0, 20, (64, 12)), torch.randint(0, 5, (64, 12))
    net = nn.Sequential(nn.Embedding(20, 16), nn.Linear(16, 5))  # (B, T, C)
    model = kiln.Model(net, loss="cross_entropy", metrics=["accuracy"])
    model.fit((x, y), epochs=1, batch_size=16, verbose=0)
    assert set(model.evaluate((x, y))) == {"loss", "accuracy"}


def test_regression_with_column_output_and_flat_targets():
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])  # (B,)
    model = kiln.Model(nn.Linear(4, 1), loss="mse", lr=5e-2, metrics=["mae", "r2"])
    model.fit((x, y), epochs=30, batch_size=32, seed=0, verbose=0)
    result = model.evaluate((x, y))
    assert result["r2"] > 0.99 and result["mae"] < 0.1, result
    assert model.predict(x).shape == (256, 1)


def test_multi_input_module():
    class TwoTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(5, 4)

        def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
            return self.a(left) + self.b(right)

    left, right, y = torch.randn(40, 3), torch.randn(40, 5), torch.randint(0, 4, (40,))
    model = kiln.Model(TwoTower(), loss="cross_entropy")
    model.fit(ArrayDataset((left, right), y), epochs=1, batch_size=8, verbose=0)
    assert model.predict(ArrayDataset((left, right))).shape == (40, 4)


def test_kernels_on_swaps_norms_and_loss_and_keeps_results():
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    plain = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 3))
    fused = copy.deepcopy(plain)
    a = kiln.Model(plain, loss="cross_entropy", optimizer="sgd", lr=0.1, kernels="off")
    b = kiln.Model(fused, loss="cross_entropy", optimizer="sgd", lr=0.1, kernels="on")
    assert type(fused[1]).__module__.startswith("kiln.kernels") and type(plain[1]) is nn.LayerNorm
    a.fit((x, y), epochs=2, batch_size=16, shuffle=False, verbose=0)
    b.fit((x, y), epochs=2, batch_size=16, shuffle=False, verbose=0)
    for p, q in zip(plain.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-5)
    with pytest.raises(kiln.KilnError, match="kernels must be"):
        kiln.Model(nn.Linear(2, 2), kernels="fast")


def test_gradient_doctor_is_on_by_default_and_can_be_turned_off():
    torch.manual_seed(0)
    deep = nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(16, 16), nn.Sigmoid())], nn.Linear(16, 2))
    x, y = torch.randn(256, 16), torch.randint(0, 2, (256,))
    history = kiln.Model(deep, loss="cross_entropy", optimizer="sgd", lr=0.01).fit(
        (x, y), epochs=8, batch_size=16, verbose=0)
    kinds = {finding.kind for finding in history.diagnostics}
    assert "vanishing" in kinds, history.diagnostics
    quiet = kiln.Model(copy.deepcopy(deep), loss="cross_entropy", optimizer="sgd", lr=0.01).fit(
        (x, y), epochs=8, batch_size=16, verbose=0, doctor=False)
    assert quiet.diagnostics == []
