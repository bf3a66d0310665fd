"""The objective of ``kiln tune job.toml``: a trial's parameters are ``section.key=value`` overrides of the job config.

A parameter named ``model.lr`` overrides ``[model] lr``, ``model.config.width`` a key of the factory's ``config``
table, ``fit.batch_size`` the batch size: exactly what ``kiln train job.toml model.lr=3e-4`` would do. Each trial
loads the config with its overrides, lets kiln.jobs build the data and the Model (with the same checks and trust rules
as ``kiln train``), and trains with the config's ``[fit]`` section.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .trial import Objective

__all__ = ["job_objective", "override"]


def override(name: str, value: Any) -> str:
    """``name=value`` as ``kiln train`` reads it on the command line."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = repr(value)
    elif value is None:
        text = "none"
    else:
        text = str(value)
    return f"{name}={text}"


def job_objective(path: str | os.PathLike[str], *, overrides: Sequence[str] = (), trust: Sequence[str] = (),
                  store: Any = None) -> Objective:  # fmt: skip
    """An objective that trains the job config at ``path`` with each trial's parameters as overrides.

    ``overrides`` (``section.key=value``) apply to every trial, before the trial's own parameters.

    Example:
        >>> study = kiln.tune(job_objective("examples/tune/job.toml"), space=read_space("examples/tune/space.toml"))
    """
    try:
        from ..jobs.config import load_job
        from ..jobs.train import open_store, prepare
    except ImportError:
        raise ConfigError("kiln tune JOB needs kiln's job configs (kiln train job.toml), which this kiln lacks; "
                          "tune from Python with kiln.tune(objective, space=...) instead.") from None  # fmt: skip
    file = Path(path)
    fixed = list(overrides)
    name = load_job(file, fixed).config.job.name  # the config itself is checked before the first trial
    opened = open_store(store)

    def objective(params: dict[str, Any]) -> tuple[Any, Any, Any, dict[str, Any]]:
        job = load_job(file, [*fixed, *(override(key, value) for key, value in params.items())])
        prepared = prepare(job, opened, trust=list(trust) or None)
        fit = job.config.fit
        model = prepared.model
        model.data_fingerprint = prepared.data_fingerprint
        options = {
            "epochs": fit.epochs, "batch_size": fit.batch_size, "precision": fit.precision, "mode": fit.mode,
            "clip_grad_norm": fit.clip_grad_norm, "accumulate": fit.accumulate, "lr_schedule": fit.lr_schedule,
            "seed": fit.seed, "shuffle": fit.shuffle, "drop_last": fit.drop_last, "num_workers": fit.num_workers,
            "on_nonfinite": fit.on_nonfinite, "doctor": fit.doctor,
        }  # fmt: skip
        return model, prepared.datasets.train, prepared.datasets.validation, options

    def register_options(params: dict[str, Any]) -> dict[str, Any]:
        """What Study.register passes to Model.register: the job's factory (the torch runtime rebuilds with it)."""
        config = load_job(file, [*fixed, *(override(key, value) for key, value in params.items())]).config
        return {"factory": config.model.module, "config": config.model.config, "onnx": config.register.onnx}

    objective.__name__ = name  # the study's default name starts with the job's
    objective.register_options = register_options  # type: ignore[attr-defined]
    return objective
