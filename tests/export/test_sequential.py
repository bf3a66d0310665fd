"""kiln.export.sequential: every layer it knows is described with its constructor arguments and rebuilt from JSON
into a module that computes exactly the same; a config it does not accept is an IntegrityError before torch runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from kiln.errors import IntegrityError
from kiln.export.sequential import _LAYERS, describe, sequential


def _floats(*shape: int) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(*shape)


def _indices(*shape: int) -> Callable[[], torch.Tensor]:
    return lambda: torch.randint(0, 10, shape)


_PLAIN = [nn.ReLU(), nn.ReLU6(), nn.SELU(), nn.SiLU(), nn.Mish(), nn.Tanh(), nn.Sigmoid(), nn.Hardswish(),
          nn.Hardsigmoid(), nn.Softsign(), nn.Identity()]  # fmt: skip

# (the stack, its input): non-default arguments wherever they change the result, so a dropped one shows.
CASES: list[tuple[list[nn.Module], Callable[[], torch.Tensor]]] = [
    ([nn.Linear(6, 4, bias=False)], _floats(3, 6)),
    ([nn.Conv1d(2, 4, 3, stride=2, padding=1, groups=2, padding_mode="reflect")], _floats(2, 2, 9)),
    ([nn.Conv2d(2, 4, 3, padding="same", dilation=2, bias=False, padding_mode="circular")], _floats(2, 2, 7, 7)),
    ([nn.Conv3d(1, 2, (1, 2, 2), stride=(1, 2, 2))], _floats(1, 1, 3, 4, 4)),
    ([nn.ConvTranspose1d(2, 3, 3, stride=2, output_padding=1)], _floats(2, 2, 5)),
    ([nn.ConvTranspose2d(2, 4, 3, stride=2, padding=1, output_padding=1, groups=2, bias=False)], _floats(1, 2, 4, 4)),
    ([nn.BatchNorm1d(4, eps=1e-3, momentum=None)], _floats(5, 4)),
    ([nn.BatchNorm2d(3, affine=False, momentum=0.5)], _floats(2, 3, 4, 4)),
    ([nn.BatchNorm3d(2, track_running_stats=False)], _floats(2, 2, 2, 3, 3)),
    ([nn.InstanceNorm1d(3, affine=True)], _floats(2, 3, 8)),
    ([nn.InstanceNorm2d(3, track_running_stats=True)], _floats(2, 3, 4, 4)),
    ([nn.GroupNorm(2, 4, eps=1e-3, affine=False)], _floats(2, 4, 5)),
    ([nn.LayerNorm([3, 4], eps=1e-3, bias=False)], _floats(2, 3, 4)),
    ([nn.RMSNorm(4, eps=1e-3, elementwise_affine=False)], _floats(2, 4)),
    ([nn.Embedding(10, 4, padding_idx=0, max_norm=1.0, norm_type=1.0)], _indices(2, 5)),
    ([nn.EmbeddingBag(10, 4, mode="max", padding_idx=2), nn.Linear(4, 2)], _indices(3, 4)),
    ([nn.EmbeddingBag(10, 4, mode="sum", max_norm=0.5)], _indices(3, 4)),
    ([nn.Dropout(0.3), nn.Dropout1d(0.2)], _floats(2, 3, 4)),
    ([nn.Dropout2d(0.2)], _floats(2, 3, 4, 4)),
    ([nn.Flatten(0, -1)], _floats(2, 3)),
    ([nn.Unflatten(1, (2, -1))], _floats(2, 6)),
    ([nn.Softmax(dim=0), nn.LogSoftmax(dim=1)], _floats(3, 4)),
    ([nn.GLU(dim=0)], _floats(4, 3)),
    ([nn.GELU("tanh"), nn.LeakyReLU(0.2), nn.ELU(0.5), nn.CELU(0.7), nn.PReLU(3)], _floats(2, 3)),
    ([nn.Softplus(beta=2.0, threshold=1.0), nn.Hardtanh(-0.5, 0.25)], _floats(2, 3)),
    ([nn.MaxPool1d(2, stride=1, padding=1, dilation=2, ceil_mode=True)], _floats(1, 2, 7)),
    ([nn.MaxPool2d(2, ceil_mode=True, return_indices=True)], _floats(1, 1, 7, 7)),
    ([nn.AvgPool1d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)], _floats(1, 2, 8)),
    ([nn.AvgPool2d(2, divisor_override=3)], _floats(1, 1, 4, 4)),
    ([nn.AdaptiveAvgPool1d(3), nn.AdaptiveMaxPool1d(2, return_indices=True)], _floats(1, 2, 7)),
    ([nn.AdaptiveAvgPool2d((None, 2)), nn.AdaptiveMaxPool2d((2, None))], _floats(1, 2, 5, 6)),
    (
        [nn.AdaptiveMaxPool2d(3), nn.Flatten(), nn.Sequential(nn.Linear(18, 3), nn.Sequential(*_PLAIN))],
        _floats(2, 2, 7, 7),
    ),
]


@pytest.mark.parametrize(
    ("layers", "make_input"), CASES, ids=lambda case: type(case[0]).__name__ if isinstance(case, list) else ""
)
def test_describe_and_rebuild_compute_the_same(layers: list[nn.Module], make_input: Callable[[], torch.Tensor]) -> None:
    torch.manual_seed(0)
    original = nn.Sequential(*layers)
    x = make_input()
    original.train()(x)  # running statistics and max_norm renormalisation become part of the state
    config = json.loads(json.dumps(describe(original), allow_nan=False))  # plain JSON, as a package stores it
    rebuilt = sequential(**config)
    assert describe(rebuilt) == config  # every argument survived
    rebuilt.load_state_dict(original.state_dict(), strict=True)
    torch.testing.assert_close(rebuilt.eval()(x), original.eval()(x), rtol=0, atol=0)


def test_every_known_layer_is_checked_above() -> None:
    def classes(modules: list[nn.Module]) -> set[type]:
        return {type(m) for module in modules for m in module.modules() if type(m) is not nn.Sequential}

    covered = set().union(*(classes(layers) for layers, _ in CASES))
    assert covered == set(_LAYERS), sorted(c.__name__ for c in set(_LAYERS) ^ covered)


def test_a_stack_with_another_layer_is_not_described() -> None:
    assert describe(nn.Sequential(nn.Linear(2, 2), nn.LSTM(2, 2))) is None
    assert describe(nn.Sequential(nn.Sequential(nn.Bilinear(2, 2, 2)))) is None
    assert describe(nn.Linear(2, 2)) is None  # only a Sequential


LINEAR = {"in_features": 2, "out_features": 3, "bias": True}


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([["Lambda", {}]], "layers[0]: unknown layer 'Lambda'; known: Sequential, AdaptiveAvgPool1d"),
        ([["os.system", {"command": "true"}]], "layers[0]: unknown layer 'os.system'"),
        ([[["Linear"], {}]], "layers[0]: unknown layer ['Linear']"),
        ([["Linear", {**LINEAR, "device": "cuda"}]], "layers[0] (Linear): unknown argument 'device'; Linear takes "),
        ([["Linear", {**LINEAR, "in_features": "2"}]], "layers[0] (Linear).in_features: expected an integer >= 1"),
        ([["Linear", {**LINEAR, "in_features": True}]], "(Linear).in_features: expected an integer >= 1, got True"),
        ([["Linear", {**LINEAR, "out_features": 0}]], "(Linear).out_features: expected an integer >= 1, got 0"),
        ([["Linear", {**LINEAR, "bias": 1}]], "(Linear).bias: expected true or false, got 1"),
        ([["Dropout", {"p": 1.5}]], "(Dropout).p: expected a number >= 0.0 <= 1.0, got 1.5"),
        ([["LayerNorm", {"normalized_shape": [4], "eps": float("nan")}]], "(LayerNorm).eps: expected a number >= 0.0"),
        ([["Conv2d", {"in_channels": 1, "out_channels": 1, "kernel_size": 3, "padding_mode": "__import__('os')"}]],
         "(Conv2d).padding_mode: expected one of 'zeros', 'reflect', 'replicate', 'circular', got"),
        ([["Conv2d", {"in_channels": 1, "out_channels": 1, "kernel_size": [3, 0]}]], "(Conv2d).kernel_size: expected"),
        ([["EmbeddingBag", {"num_embeddings": 4, "embedding_dim": 2, "mode": "median"}]],
         "(EmbeddingBag).mode: expected one of 'sum', 'mean', 'max', got 'median'"),
        ([["AdaptiveMaxPool2d", {"output_size": [0, 2]}]], "(AdaptiveMaxPool2d).output_size: expected"),
        ([["AdaptiveMaxPool1d", {"output_size": 2, "return_indices": "yes"}]], "(AdaptiveMaxPool1d).return_indices"),
        ([["Conv2d", {"in_channels": 4, "out_channels": 4, "kernel_size": 1, "groups": 3}]],
         "layers[0] (Conv2d): torch refuses"),
        ([["ReLU", {}], ["Sequential", {"layers": [["Linear", {**LINEAR, "bias": None}]]}]],
         "layers[1].layers[0] (Linear).bias: expected true or false, got None"),
        ([["Sequential", {"layers": [], "code": "x"}]], "layers[0] (Sequential): expected {'layers': [...]}"),
        ([["Linear", LINEAR, "extra"]], "layers[0]: expected a [layer, arguments] pair"),
        ("Linear", "layers: expected a list of [layer, arguments] pairs, got str"),
    ],
)  # fmt: skip
def test_a_config_it_does_not_accept_is_an_integrity_error(layers: Any, message: str) -> None:
    with pytest.raises(IntegrityError) as raised:
        sequential(layers)
    assert message in str(raised.value)
