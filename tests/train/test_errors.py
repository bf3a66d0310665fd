"""The first errors a user meets say what was passed, what is allowed and how to fix it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kiln
from kiln.data import ArrayDataset
from kiln.errors import ConfigError, DataError, KilnError, NonFiniteLossError, ShapeError


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown loss 'crossentropy'.*cross_entropy.*mse"):
        kiln.Model(nn.Linear(2, 2), loss="crossentropy")


def test_unknown_optimizer_and_metric():
    with pytest.raises(ConfigError, match=r"unknown optimizer 'adamm'.*adamw"):
        kiln.Model(nn.Linear(2, 2), loss="mse", optimizer="adamm")
    with pytest.raises(ConfigError, match=r"unknown metric 'acc'.*accuracy"):
        kiln.Model(nn.Linear(2, 2), loss="mse", metrics=["acc"])


def test_shape_mismatch_names_both_shapes():
    model = kiln.Model(nn.Linear(4, 3), loss="mse")
    with pytest.raises(ShapeError, match=r"\(8, 3\).*\(8, 5\)"):
        model.fit((torch.randn(8, 4), torch.randn(8, 5)), epochs=1, batch_size=8, verbose=0)


def test_class_targets_against_wrong_output_shape():
    model = kiln.Model(nn.Linear(4, 3), loss="cross_entropy")
    with pytest.raises(ShapeError, match=r"\(8, 3\).*\(8, 2\)"):
        model.fit((torch.randn(8, 4), torch.zeros(8, 2, dtype=torch.long)), epochs=1, batch_size=8, verbose=0)


def test_float_class_labels_are_explained():
    model = kiln.Model(nn.Linear(4, 3), loss="cross_entropy")
    with pytest.raises(ShapeError, match=r"y\.long\(\)"):
        model.fit((torch.randn(8, 4), torch.zeros(8)), epochs=1, batch_size=8, verbose=0)


def test_empty_dataset():
    model = kiln.Model(nn.Linear(4, 3), loss="cross_entropy")
    with pytest.raises(DataError, match="empty"):
        model.fit(ArrayDataset(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)), epochs=1, verbose=0)


def test_mismatched_lengths():
    with pytest.raises(DataError, match=r"same first dimension.*\(10, 4\).*\(9,\)"):
        ArrayDataset(torch.zeros(10, 4), torch.zeros(9))


def test_non_finite_loss_names_epoch_and_batch():
    x = torch.randn(64, 4)
    x[37] = float("nan")  # batch 37 // 8 = 4 of the unshuffled epoch
    model = kiln.Model(nn.Linear(4, 1), loss="mse")
    # checked at the epoch's end (batch 7), the step counted back to batch 4's: the fifth optimizer step
    with pytest.raises(NonFiniteLossError, match=r"nan at epoch 0, batch 4 \(optimizer step 5\)"):
        model.fit((x, torch.randn(64)), epochs=1, batch_size=8, shuffle=False, verbose=0)
    assert model.fit_status == "failed"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs must be a positive int"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"accumulate": 0}, "accumulate must be a positive int"),
        ({"mode": "fast"}, "mode must be 'eager' or 'graph'"),
        ({"precision": "fp8"}, r"precision 'fp8' is not supported.*bf16"),
        ({"lr_schedule": "triangle"}, r"kind 'triangle' is not known.*cosine"),
        ({"clip_grad_norm": -1.0}, "clip_grad_norm must be a positive number"),
    ],
)
def test_fit_arguments_are_validated(kwargs, match):
    model = kiln.Model(nn.Linear(4, 2), loss="cross_entropy")
    with pytest.raises(ConfigError, match=match):
        model.fit((torch.randn(8, 4), torch.zeros(8, dtype=torch.long)), verbose=0, **kwargs)


def test_fit_without_loss():
    with pytest.raises(ConfigError, match="fit needs a loss"):
        kiln.Model(nn.Linear(2, 2)).fit((torch.randn(4, 2), torch.zeros(4)), verbose=0)


def test_errors_are_kiln_errors_and_builtins():
    assert issubclass(ShapeError, KilnError) and issubclass(ShapeError, ValueError)
    assert issubclass(NonFiniteLossError, FloatingPointError)
