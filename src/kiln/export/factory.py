"""Rebuild a module from an importable factory: ``{"module": "pkg.mod:factory", "config": {...}}``.

Modules are rebuilt on the meta device (no random initialisation, no memory) and then take the stored weights
by assignment, so loading a 100 MB model costs about one read of its weights. A factory that cannot run on the
meta device is simply run on the CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..errors import ConfigError, IntegrityError, KilnError
from .trust import FACTORY_PATTERN, check_factory, require_trusted

__all__ = ["build_module", "check_rebuild", "factory_path", "load_weights", "resolve_config"]


def factory_path(factory: str | Callable[..., Any] | None, module: torch.nn.Module) -> str:
    """``"pkg.mod:name"`` for ``factory`` (a string, a class or a function), default the module's own class."""
    if isinstance(factory, str):
        if not FACTORY_PATTERN.fullmatch(factory):
            raise ConfigError(f"factory {factory!r} must look like 'package.module:function' (or ':Class').")
        return factory
    target = factory if factory is not None else type(module)
    qualname, modname = getattr(target, "__qualname__", ""), getattr(target, "__module__", "")
    if not qualname or not modname or "<" in qualname:
        raise ConfigError(
            f"factory {target!r} is not importable by name (a lambda or a function defined inside another "
            "function); define it at the top level of a module and pass it, or pass 'package.module:function'."
        )
    return f"{modname}:{qualname}"


def resolve_config(module: torch.nn.Module, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The factory's keyword arguments: ``config``, else the module's ``config`` attribute (dict or dataclass)."""
    if config is None:
        found = getattr(module, "config", None)
        if dataclasses.is_dataclass(found) and not isinstance(found, type):
            config = dataclasses.asdict(found)
        elif isinstance(found, Mapping):
            config = found
    value = dict(config or {})
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config must be plain JSON (str, numbers, bools, lists, dicts): {error}.") from error
    return value


def _import(path: str) -> Callable[..., Any]:
    check_factory(path, label="factory")
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            f"cannot import the factory {path!r} ({error}). Install the package that defines it, or load with "
            "runtime='onnx'."
        ) from error
    if not callable(target):
        raise ConfigError(f"factory {path!r} is not callable.")
    return target


def build_module(path: str, config: Mapping[str, Any], *, meta: bool) -> torch.nn.Module:
    """Call the factory with ``config`` (on the meta device when ``meta``)."""
    factory = _import(path)
    with torch.device("meta") if meta else contextlib.nullcontext():
        module = factory(**config)
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"factory {path!r} returned {type(module).__name__}, not a torch.nn.Module.")
    return module


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def check_rebuild(module: torch.nn.Module, path: str, config: Mapping[str, Any]) -> str | None:
    """None when ``path(**config)`` builds a module with the same state_dict keys and shapes, else why not."""
    try:
        rebuilt = build_module(path, config, meta=True)
    except Exception:
        try:
            rebuilt = build_module(path, config, meta=False)
        except Exception as error:
            return f"{path}(**{config!r}) failed: {type(error).__name__}: {error}"
    expected, got = _shapes(module), _shapes(rebuilt)
    if expected == got:
        return None
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    return (
        f"{path}(**{config!r}) builds a different module: missing {missing[:5]}, unexpected {extra[:5]}, "
        f"other shapes {reshaped[:5]}"
    )


def load_weights(
    path: str, config: Mapping[str, Any], state: Mapping[str, torch.Tensor], *, trust: Sequence[str], label: str
) -> torch.nn.Module:
    """Build the module and give it ``state`` (assigned, not copied, when the meta build worked); eval mode.

    ``path`` comes from a package, so it is checked against ``trust`` (see :mod:`kiln.export.trust`) before it is
    imported: an untrusted factory raises TrustError and nothing is imported or called.
    """
    check_factory(path, label=label)
    require_trusted(path, trust, label=label)
    try:
        return _rebuild(path, config, state)
    except KilnError:
        raise
    except Exception as error:  # a trusted factory given a config it rejects: the package is wrong, not kiln
        raise IntegrityError(
            f"{label}: rebuilding the module with {path}(**config) failed: {type(error).__name__}: {error}"
        ) from error


def _rebuild(path: str, config: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    try:
        module, meta = build_module(path, config, meta=True), True
    except ConfigError:
        raise
    except Exception:
        module, meta = build_module(path, config, meta=False), False
    try:
        module.load_state_dict(state, strict=True, assign=meta)
    except RuntimeError as error:
        raise IntegrityError(f"the stored weights do not fit the module {path} builds: {error}") from error
    if meta and any(t.is_meta for t in (*module.parameters(), *module.buffers())):
        # A non-persistent buffer is not in the state_dict: build for real and copy the weights in.
        module = build_module(path, config, meta=False)
        module.load_state_dict(state, strict=True)
    return module.eval()
