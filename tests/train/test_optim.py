"""Named optimizers: torch's fused step where it exists, the default step where it does not or the user chose."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import kiln


def _fused(optimizer: torch.optim.Optimizer) -> bool:
    return bool(optimizer.defaults.get("fused"))


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "adagrad"])
def test_named_optimizers_are_fused_where_torch_has_a_fused_step(name):
    assert _fused(kiln.Model(nn.Linear(4, 2), loss="mse", optimizer=name).optimizer)


@pytest.mark.parametrize("name", ["rmsprop", "nadam", "radam"])
def test_optimizers_without_a_fused_step_are_built_as_usual(name):
    assert not _fused(kiln.Model(nn.Linear(4, 2), loss="mse", optimizer=name).optimizer)


@pytest.mark.parametrize("options", [{"foreach": True}, {"fused": False}, {"differentiable": False}])
def test_the_users_choice_of_implementation_wins(options):
    optimizer = kiln.Model(nn.Linear(4, 2), loss="mse", optimizer="adam", optimizer_options=options).optimizer
    assert not _fused(optimizer)
    assert all(optimizer.defaults[key] == value for key, value in options.items())


def test_sparse_embeddings_keep_the_default_step_and_train():
    module = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Flatten(), nn.Linear(8, 2))
    model = kiln.Model(module, loss="cross_entropy", optimizer="sgd", lr=0.1)
    assert not _fused(model.optimizer)
    before = module[0].weight.detach().clone()
    model.fit((torch.randint(0, 10, (16, 2)), torch.randint(0, 2, (16,))), epochs=1, batch_size=8, verbose=0)
    assert not torch.equal(before, module[0].weight)


def test_an_optimizer_object_is_used_as_given():
    module = nn.Linear(4, 2)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    assert kiln.Model(module, loss="mse", optimizer=optimizer).optimizer is optimizer


def test_fused_adam_trains_like_the_default_step(digits):
    # The fused kernel reorders float operations; after 20 Adam steps the weights agree to rounding noise.
    x, y = torch.from_numpy(digits[0][:320]), torch.from_numpy(digits[1][:320])
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    ours = copy.deepcopy(reference)
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3, foreach=False)
    for i in range(0, 320, 16):
        nn.functional.cross_entropy(reference(x[i : i + 16]), y[i : i + 16]).backward()
        optimizer.step()
        optimizer.zero_grad()
    model = kiln.Model(ours, loss="cross_entropy", optimizer="adam", lr=1e-3)
    assert _fused(model.optimizer)
    model.fit((x, y), epochs=1, batch_size=16, shuffle=False, verbose=0)
    for expected, got in zip(reference.parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


class _CountingSGD(torch.optim.SGD):
    calls = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        _CountingSGD.calls += 1
        super().zero_grad(set_to_none=set_to_none)


def test_fit_clears_gradients_after_every_step_and_respects_an_overridden_zero_grad():
    module = nn.Linear(4, 2)
    grads_at_step: list[bool] = []

    class SeeGradients(kiln.Callback):
        def on_before_optimizer_step(self, model, step):
            grads_at_step.append(all(p.grad is not None for p in model.module.parameters()))

        def on_train_batch_end(self, model, step, loss):
            assert all(p.grad is None for p in model.module.parameters())

    data = (torch.randn(32, 4), torch.randint(0, 2, (32,)))
    kiln.Model(module, loss="cross_entropy", optimizer="sgd").fit(
        data, epochs=1, batch_size=8, callbacks=[SeeGradients()], verbose=0, doctor=False)
    assert grads_at_step == [True] * 4
    optimizer = _CountingSGD(module.parameters(), lr=0.1)
    kiln.Model(module, loss="cross_entropy", optimizer=optimizer).fit(data, epochs=1, batch_size=8, verbose=0)
    assert _CountingSGD.calls == 4
