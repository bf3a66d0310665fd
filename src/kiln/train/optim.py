"""Optimizer resolution: names, classes, factories or ready optimizers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["OPTIMIZERS", "resolve_optimizer"]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
}


def resolve_optimizer(optimizer: Any, parameters: Iterable[torch.nn.Parameter], *, lr: float | None,
                      options: dict[str, Any]) -> torch.optim.Optimizer:
    """Build the optimizer for ``Model``.

    ``optimizer`` is a name (see OPTIMIZERS), an optimizer class, a function ``parameters -> optimizer``, or an
    optimizer already built on the module's parameters (``lr`` and ``options`` must then be left unset).
    """
    if isinstance(optimizer, torch.optim.Optimizer):
        if lr is not None or options:
            raise ConfigError("lr and optimizer options cannot be combined with an optimizer object; "
                              "set them when you build the optimizer, or pass the optimizer by name.")
        return optimizer
    kwargs = dict(options)
    if lr is not None:
        if not lr > 0:
            raise ConfigError(f"lr must be a positive number, got {lr!r}.")
        kwargs["lr"] = lr
    if isinstance(optimizer, str):
        cls = OPTIMIZERS.get(optimizer.lower())
        if cls is None:
            raise ConfigError(f"unknown optimizer {optimizer!r}; valid names: {sorted(OPTIMIZERS)}, or pass a "
                              "torch.optim class or optimizer.")
        if cls is torch.optim.SGD and "lr" not in kwargs:
            kwargs["lr"] = 1e-2
        return cls(parameters, **kwargs)
    if callable(optimizer):
        try:
            built = optimizer(parameters, **kwargs)
        except TypeError as error:
            raise ConfigError(f"could not build optimizer from {optimizer!r} with {kwargs}: {error}") from error
        if not isinstance(built, torch.optim.Optimizer):
            raise ConfigError(f"optimizer factory {optimizer!r} returned {type(built).__name__}, not an optimizer.")
        return built
    raise ConfigError(f"optimizer must be a name {sorted(OPTIMIZERS)}, a torch.optim class, or an optimizer; "
                      f"got {optimizer!r}.")
