"""kiln.init: each scheme gives the documented statistics on each layer type; errors list what is allowed."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from kiln.errors import ConfigError
from kiln.train.init import SCHEMES, init


def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize(
    ("layer", "fan_in"),
    [(nn.Linear(1000, 400), 1000), (nn.Conv2d(32, 64, 3), 32 * 9), (nn.Conv1d(16, 256, 5), 16 * 5)],
    ids=["linear", "conv2d", "conv1d"],
)
def test_kaiming_is_he_normal_with_the_relu_gain(layer, fan_in):
    layer.bias.data.normal_()
    assert init(layer, generator=generator()) is layer
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
    assert layer.weight.mean().abs().item() < 0.1 * math.sqrt(2 / fan_in)
    assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


def test_xavier_is_glorot_uniform_and_scales_with_the_nonlinearity_gain():
    layer = nn.Linear(300, 200)
    bound = math.sqrt(6 / 500)
    init(layer, "xavier", generator=generator())
    assert layer.weight.abs().max().item() <= bound
    assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    init(layer, "xavier", nonlinearity="tanh", bias=0.5, generator=generator())
    assert layer.weight.std().item() == pytest.approx(5 / 3 * bound / math.sqrt(3), rel=0.05)
    assert torch.equal(layer.bias, torch.full_like(layer.bias, 0.5))


def test_orthogonal_rows_are_orthonormal_times_the_gain():
    layer = nn.Linear(64, 32)  # weight (32, 64): orthonormal rows
    init(layer, "orthogonal", generator=generator())
    torch.testing.assert_close(layer.weight @ layer.weight.T, torch.eye(32), atol=1e-5, rtol=0)
    init(layer, "orthogonal", gain=2.0, generator=generator())
    torch.testing.assert_close(layer.weight @ layer.weight.T, 4 * torch.eye(32), atol=1e-4, rtol=0)


def test_small_normal_uses_std():
    layer = nn.Linear(500, 500)
    init(layer, "small_normal", std=0.02, generator=generator())
    assert layer.weight.std().item() == pytest.approx(0.02, rel=0.02)


@pytest.mark.parametrize(("rnn", "gates"), [(nn.LSTM(8, 16, num_layers=2), 4), (nn.GRU(8, 16), 3), (nn.RNN(8, 16), 1)])
def test_recurrent_weights_are_initialised_one_gate_at_a_time(rnn, gates):
    init(rnn, "orthogonal", bias=0.25, generator=generator())
    for name, param in rnn.named_parameters():
        if name.startswith("weight_hh"):  # (gates * H, H): each gate block is itself orthogonal
            for block in param.chunk(gates):
                torch.testing.assert_close(block @ block.T, torch.eye(16), atol=1e-5, rtol=0)
        if name.startswith("bias"):
            assert torch.equal(param, torch.full_like(param, 0.25)), name


def test_attention_in_projection_per_query_key_value_and_out_projection_as_linear():
    attention = nn.MultiheadAttention(32, 4)
    init(attention, "orthogonal", bias=0.1, generator=generator())
    for block in attention.in_proj_weight.chunk(3):
        torch.testing.assert_close(block @ block.T, torch.eye(32), atol=1e-5, rtol=0)
    assert torch.equal(attention.in_proj_bias, torch.full((96,), 0.1))
    weight = attention.out_proj.weight
    torch.testing.assert_close(weight @ weight.T, torch.eye(32), atol=1e-5, rtol=0)


def test_embedding_keeps_its_padding_row_at_zero():
    embedding = nn.Embedding(100, 16, padding_idx=0)
    init(embedding, "small_normal", std=0.1, generator=generator())
    assert torch.equal(embedding.weight[0], torch.zeros(16))
    assert embedding.weight[1:].std().item() == pytest.approx(0.1, rel=0.1)


def test_norms_reset_to_one_and_zero_and_other_parameters_are_left_alone():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.LayerNorm(8), nn.RMSNorm(8))
            self.scale = nn.Parameter(torch.full((8,), 3.0))

    net = Net()
    for param in net.body[1:].parameters():
        param.data.uniform_(2, 3)
    init(net, "kaiming")
    for norm in net.body[1:]:
        assert torch.equal(norm.weight, torch.ones(8))
        if getattr(norm, "bias", None) is not None:
            assert torch.equal(norm.bias, torch.zeros(8))
    assert torch.equal(net.scale, torch.full((8,), 3.0))


def test_the_same_generator_seed_gives_the_same_weights():
    def build() -> nn.Module:
        return init(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(36, 2)), "kaiming", generator=generator())

    for a, b in zip(build().parameters(), build().parameters(), strict=True):
        assert torch.equal(a, b)


def test_kaiming_keeps_a_deep_relu_network_activation_scale():
    torch.manual_seed(0)
    net = nn.Sequential(*[m for _ in range(20) for m in (nn.Linear(256, 256), nn.ReLU())])
    x = torch.randn(512, 256)
    init(net, "small_normal", std=0.01)
    assert net(x).pow(2).mean().item() < 1e-20  # the classic vanishing signal
    init(net, "kaiming")
    assert 0.1 < net(x).pow(2).mean().item() < 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "he"}, f"init scheme 'he' is not known; use one of {list(SCHEMES)}"),
        ({"nonlinearity": "swish"}, "nonlinearity 'swish' is not known; use one of ['linear', 'relu'"),
        ({"std": 0.0}, "std must be a positive number, got 0.0"),
        ({"gain": -1.0}, "gain must be a positive number or None, got -1.0"),
    ],
)
def test_errors_name_the_value_and_what_is_allowed(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        init(nn.Linear(2, 2), **kwargs)


def test_init_of_something_else_than_a_module_is_an_error():
    with pytest.raises(ConfigError, match=re.escape("init takes a torch.nn.Module, got Tensor")):
        init(torch.zeros(3))  # type: ignore[arg-type]
