"""kiln.init: the standard weight initialisation schemes, applied to a whole module by layer type."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["NONLINEARITIES", "SCHEMES", "init"]

SCHEMES = ("kaiming", "xavier", "orthogonal", "small_normal")
# Gains as torch.nn.init.calculate_gain gives them; GELU and SiLU are close enough to ReLU to share its gain.
NONLINEARITIES = ("linear", "relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid", "selu")
_GAIN_AS = {"gelu": "relu", "silu": "relu"}
_MATRICES = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd, nn.Embedding, nn.EmbeddingBag)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
          nn.RMSNorm)  # fmt: skip
_GATES = {"LSTM": 4, "GRU": 3}


def _fans(weight: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight laid out (out, in, *kernel), as torch.nn.init computes them."""
    receptive = math.prod(weight.shape[2:]) if weight.ndim > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


class _Scheme:
    def __init__(
        self, scheme: str, nonlinearity: str, gain: float | None, std: float, generator: torch.Generator | None
    ) -> None:
        self.scheme, self.std, self.generator = scheme, std, generator
        slope = 0.01 if nonlinearity == "leaky_relu" else None
        name: Any = _GAIN_AS.get(nonlinearity, nonlinearity)
        self.gain = gain if gain is not None else nn.init.calculate_gain(name, slope)

    def __call__(self, weight: torch.Tensor) -> None:
        if self.scheme == "small_normal":
            weight.normal_(0.0, self.std, generator=self.generator)
        elif self.scheme == "orthogonal":
            nn.init.orthogonal_(weight, gain=self.gain, generator=self.generator)
        elif self.scheme == "kaiming":  # He et al.: normal, std = gain / sqrt(fan_in)
            weight.normal_(0.0, self.gain / math.sqrt(max(_fans(weight)[0], 1)), generator=self.generator)
        else:  # xavier (Glorot): uniform, bound = gain * sqrt(6 / (fan_in + fan_out))
            fan_in, fan_out = _fans(weight)
            bound = self.gain * math.sqrt(6.0 / max(fan_in + fan_out, 1))
            weight.uniform_(-bound, bound, generator=self.generator)

    def gates(self, weight: torch.Tensor, count: int) -> None:
        """Stacked gate matrices (LSTM: 4, GRU: 3, attention in_proj: 3) are initialised one gate at a time."""
        for chunk in weight.chunk(count, dim=0):
            self(chunk)


@torch.no_grad()
def init(
    module: nn.Module,
    scheme: str = "kaiming",
    *,
    nonlinearity: str | None = None,
    gain: float | None = None,
    std: float = 0.01,
    bias: float = 0.0,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Initialise every layer of ``module`` with ``scheme`` by layer type, in place; returns ``module``.

    Schemes: "kaiming" (He normal, std = gain/sqrt(fan_in)), "xavier" (Glorot uniform), "orthogonal", and
    "small_normal" (N(0, ``std``), the classic small random init). ``gain`` defaults to torch's gain for
    ``nonlinearity``, which defaults to "relu" for kaiming and "linear" (gain 1) for the others.

    Linear, Bilinear, Conv*/ConvTranspose* and Embedding weights get the scheme; LSTM/GRU/RNN and
    MultiheadAttention input and recurrent weights get it one gate at a time; their biases and every layer bias are
    set to ``bias``. Normalisation layers (BatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm) are reset to weight
    1 and bias 0. An Embedding's padding row stays zero. Parameters of other modules are left as they are.

    Example:
        >>> net = kiln.init(nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)), "kaiming")
        >>> kiln.init(lstm, "orthogonal", bias=0.0)
        >>> kiln.init(tanh_mlp, "xavier", nonlinearity="tanh")
    """
    if not isinstance(module, nn.Module):
        raise ConfigError(f"init takes a torch.nn.Module, got {type(module).__name__}.")
    if scheme not in SCHEMES:
        raise ConfigError(f"init scheme {scheme!r} is not known; use one of {list(SCHEMES)}.")
    nonlinearity = nonlinearity or ("relu" if scheme == "kaiming" else "linear")
    if nonlinearity not in NONLINEARITIES:
        raise ConfigError(f"nonlinearity {nonlinearity!r} is not known; use one of {list(NONLINEARITIES)}.")
    if not std > 0:
        raise ConfigError(f"std must be a positive number, got {std!r}.")
    if gain is not None and not gain > 0:
        raise ConfigError(f"gain must be a positive number or None, got {gain!r}.")
    apply = _Scheme(scheme, nonlinearity, gain, std, generator)
    for layer in module.modules():
        if isinstance(layer, _MATRICES):
            apply(layer.weight)
            padding = getattr(layer, "padding_idx", None)
            if padding is not None:
                layer.weight[padding].zero_()
        elif isinstance(layer, nn.RNNBase):
            gates = _GATES.get(layer.mode, 1)
            for name, param in layer.named_parameters(recurse=False):
                if name.startswith(("weight_ih", "weight_hh")):
                    apply.gates(param, gates)
                elif name.startswith("weight_hr"):  # LSTM projection
                    apply(param)
        elif isinstance(layer, nn.MultiheadAttention):
            if layer.in_proj_weight is not None:
                apply.gates(layer.in_proj_weight, 3)  # (3E, E): query, key, value
            for weight in (layer.q_proj_weight, layer.k_proj_weight, layer.v_proj_weight):
                if weight is not None:
                    apply(weight)
            if layer.in_proj_bias is not None:
                layer.in_proj_bias.fill_(bias)
        elif isinstance(layer, _NORMS):
            for attribute, value in (("weight", 1.0), ("bias", 0.0)):
                tensor = getattr(layer, attribute, None)
                if isinstance(tensor, torch.Tensor):  # None when the norm has no affine parameters
                    tensor.fill_(value)
            continue
        else:
            continue
        for name, param in layer.named_parameters(recurse=False):
            if name.startswith("bias") and name not in ("bias_k", "bias_v"):
                param.fill_(bias)
    return module
