"""A factory for ``torch.nn.Sequential`` stacks of standard layers, so the quickest models need no factory.

``describe(module)`` records each layer's class and constructor arguments as JSON; ``sequential(layers=...)``
builds the stack again. A Sequential holding any other layer is not described (register it with a factory).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["FACTORY", "describe", "sequential"]

FACTORY = "kiln.export.sequential:sequential"


def _bias(m: nn.Module) -> bool:
    return getattr(m, "bias", None) is not None


def _attrs(*names: str) -> Callable[[nn.Module], dict[str, Any]]:
    return lambda m: {name: getattr(m, name) for name in names}


_CONV = _attrs("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")
_NORM = _attrs("num_features", "eps", "momentum", "affine", "track_running_stats")
_POOL = _attrs("kernel_size", "stride", "padding")
_LAYERS: dict[type[nn.Module], Callable[[Any], dict[str, Any]]] = {
    nn.Linear: lambda m: {"in_features": m.in_features, "out_features": m.out_features, "bias": _bias(m)},
    nn.Conv1d: lambda m: {**_CONV(m), "bias": _bias(m)},
    nn.Conv2d: lambda m: {**_CONV(m), "bias": _bias(m)},
    nn.BatchNorm1d: _NORM,
    nn.BatchNorm2d: _NORM,
    nn.LayerNorm: lambda m: {
        "normalized_shape": m.normalized_shape,
        "eps": m.eps,
        "elementwise_affine": m.elementwise_affine,
        "bias": _bias(m),
    },
    nn.Embedding: _attrs("num_embeddings", "embedding_dim", "padding_idx"),
    nn.Dropout: _attrs("p"),
    nn.Flatten: _attrs("start_dim", "end_dim"),
    nn.Unflatten: _attrs("dim", "unflattened_size"),
    nn.Softmax: _attrs("dim"),
    nn.LogSoftmax: _attrs("dim"),
    nn.GELU: _attrs("approximate"),
    nn.LeakyReLU: _attrs("negative_slope"),
    nn.ELU: _attrs("alpha"),
    nn.MaxPool1d: _POOL,
    nn.MaxPool2d: _POOL,
    nn.AvgPool1d: _POOL,
    nn.AvgPool2d: _POOL,
    nn.AdaptiveAvgPool1d: _attrs("output_size"),
    nn.AdaptiveAvgPool2d: _attrs("output_size"),
    **{layer: (lambda m: {}) for layer in (nn.ReLU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Mish)},
}
_BY_NAME = {layer.__name__: layer for layer in _LAYERS}


def _json(value: Any) -> Any:
    return [_json(v) for v in value] if isinstance(value, tuple | list) else value


def describe(module: nn.Module) -> dict[str, Any] | None:
    """The config that rebuilds ``module`` with :func:`sequential`, or None when it holds an unknown layer."""
    if type(module) is not nn.Sequential:
        return None
    layers: list[Any] = []
    for child in module:
        if type(child) is nn.Sequential:
            inner = describe(child)
            if inner is None:
                return None
            layers.append(["Sequential", inner])
        elif type(child) in _LAYERS:
            layers.append([type(child).__name__, {k: _json(v) for k, v in _LAYERS[type(child)](child).items()}])
        else:
            return None
    return {"layers": layers}


def sequential(layers: list[Any]) -> nn.Sequential:
    """Build ``nn.Sequential`` from ``[[class_name, kwargs], ...]`` as recorded by :func:`describe`.

    Example:
        >>> sequential([["Linear", {"in_features": 64, "out_features": 10, "bias": True}], ["ReLU", {}]])
        Sequential((0): Linear(in_features=64, out_features=10, bias=True) (1): ReLU())
    """
    modules: list[nn.Module] = []
    for kind, kwargs in layers:
        if kind == "Sequential":
            modules.append(sequential(**kwargs))
        elif kind in _BY_NAME:
            modules.append(_BY_NAME[kind](**kwargs))
        else:
            raise ValueError(f"unknown layer {kind!r}; known: {sorted(_BY_NAME)}")
    return nn.Sequential(*modules)
