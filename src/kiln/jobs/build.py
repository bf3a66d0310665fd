"""Turn a job config into live objects: its factories imported (when trusted), its module and its kiln.Model.

Trust follows :mod:`kiln.export.trust`. A factory named in the user's own config file is trusted for that job: the
user chose to run it by writing it there (``kiln train job.toml``, a pipeline's own train step). A config read back
from somewhere else, such as a run recorded in a store (``kiln runs rerun``), is data: its factories are imported
only when trusted by the usual rules (``--trust``, ``KILN_TRUST``, a ``kiln.factories`` entry point).
"""

from __future__ import annotations

import importlib
import logging
import random
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

import kiln

from ..errors import ConfigError, KilnError, TrustError
from ..export.trust import FACTORY_PATTERN, trusted_by
from .config import JobConfig
from .typed import suggest

__all__ = ["build_model", "build_module", "factory_modules", "import_factory", "module_versions", "seed_all"]

logger = logging.getLogger(__name__)


def factory_modules(config: JobConfig) -> tuple[str, ...]:
    """The modules the job's factories live in (what trusting "its own config" trusts)."""
    paths = [config.model.module, *([config.data.factory] if config.data.source == "factory" else [])]
    return tuple(dict.fromkeys(path.partition(":")[0] for path in paths))


def import_factory(path: str, *, key: str, python_path: Sequence[str], trust: Sequence[str]) -> Callable[..., Any]:
    """The callable ``path`` ("package.module:function") names, imported only when ``trust`` covers it.

    ``python_path`` folders are appended to ``sys.path`` (after installed packages, so a stray file there never
    shadows one). Every failure is one ConfigError or TrustError line starting with ``key``.
    """
    if not FACTORY_PATTERN.fullmatch(path):
        raise ConfigError(f"{key}: expected 'package.module:function', got {path!r}")
    if trusted_by(path, trust) is None:
        top = path.split(".")[0].partition(":")[0]
        raise TrustError(
            f"{key}: the factory {path!r} is not trusted here, so kiln will not import it (a config "
            f"that is not your own file, such as one recorded in a store, is data); if you trust the "
            f"code of {top!r}, pass --trust {top} (or set KILN_TRUST={top})"
        )
    for folder in python_path:
        if folder not in sys.path:
            sys.path.append(folder)
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"{key}: cannot import {module_name!r} ({error}); install it, or put it in a folder "
            f"of job.python_path ({', '.join(python_path) or 'none'})"
        ) from None
    except Exception as error:  # the module's own code failed while importing
        raise ConfigError(f"{key}: importing {module_name!r} failed: {type(error).__name__}: {error}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            near = suggest(part, [name for name in dir(target) if not name.startswith("_")])
            raise ConfigError(
                f"{key}: module {module_name!r} has no attribute {part!r}"
                + (f"; did you mean {module_name}:{near}?" if near else "")
            )
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"{key}: {path} is not callable")
    return cast("Callable[..., Any]", target)


def seed_all(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators: the factory's initial weights depend on them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_module(config: JobConfig, factory: Callable[..., Any]) -> torch.nn.Module:
    """Call the model factory with ``model.config`` after seeding with ``fit.seed``."""
    seed_all(config.fit.seed)
    try:
        module = factory(**config.model.config)
    except TypeError as error:
        raise ConfigError(f"model.config: {config.model.module}(**model.config) failed: {error}") from None
    except KilnError:
        raise
    except Exception as error:
        raise ConfigError(
            f"model.module: {config.model.module}(**model.config) raised {type(error).__name__}: {error}"
        ) from None
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(
            f"model.module: {config.model.module} returned {type(module).__name__}, not a torch.nn.Module"
        )
    return module


def build_model(config: JobConfig, module: torch.nn.Module) -> Any:
    """The ``kiln.Model`` of ``[model]``: loss, optimizer, lr, metrics, kernels, device."""
    model = config.model
    try:
        return kiln.Model(
            module,
            loss=model.loss,
            optimizer=model.optimizer,
            lr=model.lr,
            optimizer_options=model.optimizer_options,
            metrics=model.metrics,
            kernels=model.kernels,
            device=model.device,
        )
    except (KilnError, RuntimeError, TypeError) as error:  # e.g. an unknown device, a bad optimizer option
        raise ConfigError(f"model: {error}") from None


def module_versions(factory_path: str) -> dict[str, Any]:
    """The versions of kiln, torch and the distribution that provides the factory's module.

    A module from no installed distribution (a file in job.python_path) is recorded with its file's SHA-256.
    """
    import hashlib

    top = factory_path.partition(":")[0].split(".")[0]
    found: dict[str, Any] = {"kiln": kiln.__version__, "torch": torch.__version__}
    distributions = metadata.packages_distributions().get(top, [])
    if distributions:
        found["factory_distribution"] = {name: metadata.version(name) for name in distributions}
    else:
        module = sys.modules.get(factory_path.partition(":")[0])
        file = getattr(module, "__file__", None)
        if file and Path(file).is_file():
            found["factory_file"] = {"path": file, "sha256": hashlib.sha256(Path(file).read_bytes()).hexdigest()}
    return found
