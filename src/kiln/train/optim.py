"""Optimizer resolution: names, classes, factories or ready optimizers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["OPTIMIZERS", "resolve_optimizer", "sparse_gradients"]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
}


# Optimizers with a fused (single-kernel, all parameters at once) step on CPU and CUDA since torch 2.4.
_FUSED = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD, torch.optim.Adagrad)
_NOT_WITH_FUSED = ("fused", "foreach", "differentiable")


def _build_fused_if_possible(cls: type[torch.optim.Optimizer], parameters: Iterable[Any], kwargs: dict[str, Any],
                             *, allow_fused: bool) -> torch.optim.Optimizer:
    """``cls(parameters, **kwargs)``, with ``fused=True`` where torch supports it for these parameters.

    A named optimizer is kiln's choice to make, and the fused step is the fast one: Adam's step on a small MLP goes
    from 216 to 78 µs on one CPU thread (benchmarks/RESULTS.md). Its results differ from the per-parameter step only
    by float rounding. Left alone when the options choose an implementation themselves (``fused``, ``foreach``,
    ``differentiable``), when the module makes sparse gradients (``allow_fused=False``) and for parameters torch's
    fused kernels refuse when the optimizer is built (devices without them, integer tensors).
    """
    params = list(parameters)
    if allow_fused and cls in _FUSED and not any(key in kwargs for key in _NOT_WITH_FUSED):
        try:
            return cls(params, **kwargs, fused=True)
        except (RuntimeError, ValueError, TypeError):
            pass  # torch refused fused for these parameters: the default implementation below
    return cls(params, **kwargs)


def sparse_gradients(module: torch.nn.Module) -> bool:
    """True when ``module`` has embeddings built with ``sparse=True`` (fused optimizer steps refuse sparse grads)."""
    return any(getattr(m, "sparse", False) for m in module.modules()
               if isinstance(m, torch.nn.Embedding | torch.nn.EmbeddingBag))


def resolve_optimizer(optimizer: Any, parameters: Iterable[torch.nn.Parameter], *, lr: float | None,
                      options: dict[str, Any], allow_fused: bool = True) -> torch.optim.Optimizer:
    """Build the optimizer for ``Model``.

    ``optimizer`` is a name (see OPTIMIZERS), an optimizer class, a function ``parameters -> optimizer``, or an
    optimizer already built on the module's parameters (``lr`` and ``options`` must then be left unset). A name
    builds torch's fused implementation where it exists and ``allow_fused`` (see ``_build_fused_if_possible``).
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
        return _build_fused_if_possible(cls, parameters, kwargs, allow_fused=allow_fused)
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
