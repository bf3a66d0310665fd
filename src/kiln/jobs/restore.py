"""Rebuild what a job run trained, from its recorded config and its last checkpoint, and the job's data.

A pipeline's evaluate and register steps work from a run id, not from a model in memory: a pipeline resumed in a
new process (after a crash) must find the same weights, and the last checkpoint of a finished fit holds exactly the
weights fit ended with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError
from ..store import RunInfo, Store
from ..train.checkpoint import latest_checkpoint, load_checkpoint
from .build import build_module, import_factory
from .config import JobConfig, job_from_dict
from .sources import Datasets, build_datasets

__all__ = ["example_input", "job_datasets", "restore_run"]


def job_datasets(config: JobConfig, *, trust: Sequence[str]) -> Datasets:
    """The job's datasets, split as when it trained (the data factory, if any, imported when trusted)."""
    factory = None
    if config.data.source == "factory":
        factory = import_factory(
            config.data.factory, key="data.factory", python_path=config.job.python_path, trust=trust
        )
    return build_datasets(config.data, config.split, factory=factory)


def restore_run(store: Store, run_id: str, *, trust: Sequence[str]) -> tuple[RunInfo, JobConfig, torch.nn.Module]:
    """The run, its job config and its module with the weights of its last checkpoint (in eval mode).

    Example:
        >>> info, config, module = restore_run(store, "3f2a9c", trust=["mynets"])
    """
    info = store.run(run_id)
    recorded = info.params.get("job")
    if not isinstance(recorded, Mapping):
        raise ConfigError(f"run {info.id[:12]} ({info.name}) records no job config; it was not made by kiln train")
    if info.status != "finished":
        raise ConfigError(f"run {info.id[:12]} ({info.name}) is {info.status}, not finished: its weights are not final")
    config = job_from_dict(recorded)
    if not config.fit.checkpoint:
        raise ConfigError(
            f"run {info.id[:12]} ({info.name}) wrote no checkpoints (fit.checkpoint is empty), so its "
            "weights cannot be rebuilt; train with fit.checkpoint set (pipeline train steps always do)"
        )
    path = latest_checkpoint(config.fit.checkpoint)
    if path is None:
        raise CheckpointError(f"run {info.id[:12]} ({info.name}): no checkpoint left in {config.fit.checkpoint}")
    factory = import_factory(config.model.module, key="model.module", python_path=config.job.python_path, trust=trust)
    module = build_module(config, factory)
    module.load_state_dict(load_checkpoint(path)["module"])
    return info, config, module.eval()


def example_input(dataset: Any) -> Any:
    """One row of inputs, shape (1, ...): what fixes a registered package's signature."""
    if hasattr(dataset, "take"):  # an ArrayDataset
        x, _ = dataset.take(slice(0, 1))
        return x
    x = dataset[0][0]
    return tuple(torch.as_tensor(t)[None] for t in x) if isinstance(x, tuple | list) else torch.as_tensor(x)[None]
