"""A factory for ``torch.nn.Sequential`` stacks of standard layers, so the quickest models need no factory.

``describe(module)`` records each layer's class and every constructor argument that shapes it as JSON;
``sequential(layers=...)`` builds the stack again. A Sequential holding any other layer is not described (register
it with a factory). A package is data: before a layer is built, its class must be one of the layers below and each
argument must be one it takes, of the type and range it takes; anything else raises IntegrityError.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import IntegrityError

__all__ = ["FACTORY", "describe", "sequential"]

FACTORY = "kiln.export.sequential:sequential"


@dataclass(frozen=True)
class _Kind:
    """What one constructor argument may be: ``accepts(value)``, described as ``what`` in errors."""

    what: str
    accepts: Callable[[Any], bool]

    def __or__(self, other: _Kind) -> _Kind:
        return _Kind(f"{self.what} or {other.what}", lambda v: self.accepts(v) or other.accepts(v))


def _int(low: int | None = None) -> _Kind:
    what = "an integer" if low is None else f"an integer >= {low}"
    return _Kind(what, lambda v: type(v) is int and (low is None or v >= low))


def _real(low: float | None = None, high: float | None = None) -> _Kind:
    what = "a number" + (f" >= {low}" if low is not None else "") + (f" <= {high}" if high is not None else "")
    return _Kind(what, lambda v: type(v) in (int, float) and math.isfinite(v) and _within(v, low, high))


def _within(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def _ints(item: _Kind) -> _Kind:
    """A list (a tuple in torch) of 1 to 8 ``item``s."""
    return _Kind(f"a list, each {item.what}", lambda v: _all(v, item))


def _all(value: Any, item: _Kind) -> bool:
    return isinstance(value, list | tuple) and 0 < len(value) <= 8 and all(item.accepts(v) for v in value)


def _choice(*options: str) -> _Kind:
    return _Kind(f"one of {', '.join(map(repr, options))}", lambda v: v in options)


_NONE = _Kind("null", lambda v: v is None)
_FLAG = _Kind("true or false", lambda v: type(v) is bool)
_COUNT = _int(1)
_DIM = _int()
_SIZE = _COUNT | _ints(_COUNT)  # kernel sizes, strides, dilations
_PAD = _int(0) | _ints(_int(0))
_SHAPE = _ints(_COUNT)
_OUTPUT = _COUNT | _NONE | _ints(_COUNT | _NONE)  # adaptive pools: None keeps that dimension's size
_EPS = _real(0.0)
_PROBABILITY = _real(0.0, 1.0)

# Each layer's constructor arguments: recorded from the attributes of the same names (``bias`` from whether the
# layer has one), checked against their kinds when rebuilt. ``inplace`` (the same computation, in place) is left to
# its default.
_CONV = {
    "in_channels": _COUNT,
    "out_channels": _COUNT,
    "kernel_size": _SIZE,
    "stride": _SIZE,
    "dilation": _SIZE,
    "groups": _COUNT,
    "bias": _FLAG,
    "padding_mode": _choice("zeros", "reflect", "replicate", "circular"),
    "padding": _PAD | _choice("same", "valid"),
}
_TRANSPOSED = {**_CONV, "padding": _PAD, "output_padding": _PAD, "padding_mode": _choice("zeros")}
_NORM = {
    "num_features": _COUNT,
    "eps": _EPS,
    "momentum": _PROBABILITY | _NONE,
    "affine": _FLAG,
    "track_running_stats": _FLAG,
}
_EMBEDDING = {
    "num_embeddings": _COUNT,
    "embedding_dim": _COUNT,
    "padding_idx": _DIM | _NONE,
    "max_norm": _real(0.0) | _NONE,
    "norm_type": _real(),
    "scale_grad_by_freq": _FLAG,
    "sparse": _FLAG,
}
_MAX_POOL = {
    "kernel_size": _SIZE,
    "stride": _SIZE,
    "padding": _PAD,
    "dilation": _SIZE,
    "return_indices": _FLAG,
    "ceil_mode": _FLAG,
}
_AVG_POOL = {"kernel_size": _SIZE, "stride": _SIZE, "padding": _PAD, "ceil_mode": _FLAG, "count_include_pad": _FLAG}
_PLAIN = (  # layers without arguments
    nn.ReLU,
    nn.ReLU6,
    nn.SELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softsign,
    nn.Identity,
)
_LAYERS: dict[type[nn.Module], dict[str, _Kind]] = {
    nn.Linear: {"in_features": _COUNT, "out_features": _COUNT, "bias": _FLAG},
    nn.Conv1d: _CONV,
    nn.Conv2d: _CONV,
    nn.Conv3d: _CONV,
    nn.ConvTranspose1d: _TRANSPOSED,
    nn.ConvTranspose2d: _TRANSPOSED,
    nn.BatchNorm1d: _NORM,
    nn.BatchNorm2d: _NORM,
    nn.BatchNorm3d: _NORM,
    nn.InstanceNorm1d: _NORM,
    nn.InstanceNorm2d: _NORM,
    nn.GroupNorm: {"num_groups": _COUNT, "num_channels": _COUNT, "eps": _EPS, "affine": _FLAG},
    nn.LayerNorm: {"normalized_shape": _SHAPE, "eps": _EPS, "elementwise_affine": _FLAG, "bias": _FLAG},
    nn.RMSNorm: {"normalized_shape": _SHAPE, "eps": _EPS | _NONE, "elementwise_affine": _FLAG},
    nn.Embedding: _EMBEDDING,
    nn.EmbeddingBag: {**_EMBEDDING, "mode": _choice("sum", "mean", "max"), "include_last_offset": _FLAG},
    nn.Dropout: {"p": _PROBABILITY},
    nn.Dropout1d: {"p": _PROBABILITY},
    nn.Dropout2d: {"p": _PROBABILITY},
    nn.Flatten: {"start_dim": _DIM, "end_dim": _DIM},
    nn.Unflatten: {"dim": _DIM, "unflattened_size": _ints(_int(-1))},
    nn.Softmax: {"dim": _DIM | _NONE},
    nn.LogSoftmax: {"dim": _DIM | _NONE},
    nn.GLU: {"dim": _DIM},
    nn.GELU: {"approximate": _choice("none", "tanh")},
    nn.LeakyReLU: {"negative_slope": _real()},
    nn.ELU: {"alpha": _real()},
    nn.CELU: {"alpha": _real()},
    nn.PReLU: {"num_parameters": _COUNT},
    nn.Softplus: {"beta": _real(), "threshold": _real()},
    nn.Hardtanh: {"min_val": _real(), "max_val": _real()},
    nn.MaxPool1d: _MAX_POOL,
    nn.MaxPool2d: _MAX_POOL,
    nn.AvgPool1d: _AVG_POOL,
    nn.AvgPool2d: {**_AVG_POOL, "divisor_override": _COUNT | _NONE},
    nn.AdaptiveAvgPool1d: {"output_size": _OUTPUT},
    nn.AdaptiveAvgPool2d: {"output_size": _OUTPUT},
    nn.AdaptiveMaxPool1d: {"output_size": _OUTPUT, "return_indices": _FLAG},
    nn.AdaptiveMaxPool2d: {"output_size": _OUTPUT, "return_indices": _FLAG},
    **{layer: {} for layer in _PLAIN},
}
_BY_NAME = {layer.__name__: layer for layer in _LAYERS}


def _json(value: Any) -> Any:
    return [_json(v) for v in value] if isinstance(value, tuple | list) else value


def _argument(module: nn.Module, name: str) -> Any:
    return getattr(module, "bias", None) is not None if name == "bias" else _json(getattr(module, name))


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
            layers.append([type(child).__name__, {name: _argument(child, name) for name in _LAYERS[type(child)]}])
        else:
            return None
    return {"layers": layers}


def _layer(where: str, kind: str, arguments: dict[str, Any]) -> nn.Module:
    """One layer built from checked arguments; a combination torch refuses is an IntegrityError too."""
    kinds = _LAYERS[_BY_NAME[kind]]
    for name, value in arguments.items():
        if name not in kinds:
            raise IntegrityError(f"{where} ({kind}): unknown argument {name!r}; {kind} takes {', '.join(kinds)}")
        if not kinds[name].accepts(value):
            raise IntegrityError(f"{where} ({kind}).{name}: expected {kinds[name].what}, got {value!r}")
    try:
        return _BY_NAME[kind](**arguments)
    except Exception as error:  # e.g. groups that do not divide the channels
        raise IntegrityError(f"{where} ({kind}): torch refuses {arguments}: {error}") from error


def _build(layers: Any, where: str) -> nn.Sequential:
    if not isinstance(layers, list):
        raise IntegrityError(f"{where}: expected a list of [layer, arguments] pairs, got {type(layers).__name__}")
    modules: list[nn.Module] = []
    for index, entry in enumerate(layers):
        at = f"{where}[{index}]"
        if not (isinstance(entry, list | tuple) and len(entry) == 2 and isinstance(entry[1], dict)):
            raise IntegrityError(f"{at}: expected a [layer, arguments] pair, got {entry!r:.80}")
        kind, arguments = entry
        if kind == "Sequential":
            if set(arguments) != {"layers"}:
                raise IntegrityError(f"{at} (Sequential): expected {{'layers': [...]}}, got keys {sorted(arguments)}")
            modules.append(_build(arguments["layers"], f"{at}.layers"))
        elif isinstance(kind, str) and kind in _BY_NAME:
            modules.append(_layer(at, kind, arguments))
        else:
            raise IntegrityError(f"{at}: unknown layer {kind!r:.80}; known: Sequential, {', '.join(sorted(_BY_NAME))}")
    return nn.Sequential(*modules)


def sequential(layers: list[Any]) -> nn.Sequential:
    """Build ``nn.Sequential`` from ``[[class_name, kwargs], ...]`` as recorded by :func:`describe`.

    Raises IntegrityError for a layer it does not know, an argument the layer does not take, or a value of the wrong
    type or range, naming where it is (``layers[2] (Conv2d).kernel_size: expected ...``).

    Example:
        >>> sequential([["Linear", {"in_features": 64, "out_features": 10, "bias": True}], ["ReLU", {}]])
        Sequential((0): Linear(in_features=64, out_features=10, bias=True) (1): ReLU())
    """
    return _build(layers, "layers")
