"""Optimizer resolution: names, classes, factories or ready optimizers; one, or several by name over submodules."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["OPTIMIZERS", "needs_closure", "resolve_optimizer", "resolve_optimizers", "sparse_gradients"]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
    "lbfgs": torch.optim.LBFGS,  # steps through a closure; fit passes it one
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


def needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """True for optimizers whose ``step`` must re-evaluate the loss through a closure (L-BFGS)."""
    return isinstance(optimizer, torch.optim.LBFGS)


def _submodule_parameters(module: torch.nn.Module, name: str, names: Any) -> list[torch.nn.Parameter]:
    """The parameters of the submodule(s) ``names`` (a dotted name or a list of them) for optimizer ``name``."""
    chosen = [names] if isinstance(names, str) else names
    if not isinstance(chosen, list | tuple) or not chosen or not all(isinstance(n, str) for n in chosen):
        raise ConfigError(f"optimizer {name!r}: params must name a submodule (e.g. 'generator') or list several; "
                          f"got {names!r}.")
    params: list[torch.nn.Parameter] = []
    for sub in chosen:
        try:
            params.extend(module.get_submodule(sub).parameters())
        except AttributeError:
            children = [child for child, _ in module.named_children()]
            raise ConfigError(f"optimizer {name!r}: params={sub!r} names no submodule of {type(module).__name__}; "
                              f"its submodules are {children}.") from None
    return params


def resolve_optimizers(spec: Any, module: torch.nn.Module, *, lr: float | None, options: dict[str, Any],
                       allow_fused: bool = True) -> dict[str, torch.optim.Optimizer]:
    """Every optimizer of a Model by name: ``{"default": ...}`` for one, or one per entry of a dict.

    A dict maps a name to a name, class or optimizer, or to ``(name_or_class, options)``, where ``options`` may hold
    ``params``: the submodule (dotted name, or a list of names) whose parameters that optimizer trains. ``lr`` and
    ``options`` are the defaults of every entry. A parameter may belong to one optimizer only.

    Example:
        >>> resolve_optimizers({"generator": ("adam", {"lr": 2e-4, "params": "generator"}),
        ...                     "discriminator": ("adam", {"lr": 1e-4, "params": "discriminator"})}, gan, ...)
    """
    if not isinstance(spec, Mapping):
        return {"default": resolve_optimizer(spec, module.parameters(), lr=lr, options=options,
                                             allow_fused=allow_fused)}
    if not spec:
        raise ConfigError("optimizer={} names no optimizer; give at least one, e.g. {'default': 'adamw'}.")
    built: dict[str, torch.optim.Optimizer] = {}
    owner: dict[int, str] = {}
    for name, entry in spec.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"optimizer names must be identifiers (e.g. 'generator'); got {name!r}.")
        kind, entry_options = entry if isinstance(entry, tuple) else (entry, {})
        if not isinstance(entry_options, Mapping):
            raise ConfigError(f"optimizer {name!r}: expected (name, options dict), got {entry!r}.")
        merged = {**options, **entry_options}
        chosen = merged.pop("params", None)
        entry_lr = merged.pop("lr", lr)
        if isinstance(kind, torch.optim.Optimizer):
            if entry_options:
                raise ConfigError(f"optimizer {name!r} is built already: set its options when you build it.")
            optimizer, merged, entry_lr = kind, {}, None
            params = [p for group in kind.param_groups for p in group["params"]]
        else:
            params = list(module.parameters()) if chosen is None else _submodule_parameters(module, name, chosen)
            optimizer = None
        for param in params:
            other = owner.setdefault(id(param), name)
            if other != name:
                raise ConfigError(f"optimizers {other!r} and {name!r} both train the same parameters; give each "
                                  "its own submodule with params='...' (e.g. 'generator' and 'discriminator').")
        if optimizer is None:
            optimizer = resolve_optimizer(kind, params, lr=entry_lr, options=merged, allow_fused=allow_fused)
        built[name] = optimizer
    return built
