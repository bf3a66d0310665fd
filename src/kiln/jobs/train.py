"""Run a job: import, read, fingerprint and check everything, then fit, evaluate the test set, register.

What the run records, so that it can be run again exactly (``kiln runs rerun``):

- params ``job``: the fully resolved config (overrides applied, defaults filled in, paths absolute);
- params ``job_file``, ``job_sha256``, ``overrides``: the file it came from, that file's SHA-256, the overrides;
- params ``code``: ``git`` (commit and dirty flag of the config file's work tree, when it is in one) and
  ``versions`` (kiln, torch, and the factory's distribution, or its file's SHA-256 when it is a local module);
- params ``data_fingerprint``: see :mod:`kiln.jobs.fingerprint`;
- tags ``kiln.kind = train``, ``kiln.job.sha256``, and ``kiln.rerun_of`` on a rerun;
- the artifact ``job.toml``: the config file as it was.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..export.trust import env_trust
from ..store import ModelVersion, Store
from ..store.runs import git_commit
from ..train.tracking import TrackingCallback, fingerprint
from .build import build_model, build_module, factory_modules, import_factory, module_versions
from .config import JobConfig, LoadedJob, job_from_dict
from .fingerprint import CACHE_FILE, files_fingerprint
from .sources import Datasets, build_datasets

__all__ = ["TrainResult", "final_metrics", "open_store", "prepare", "rerun", "run_job"]

logger = logging.getLogger(__name__)

_NOT_RESULTS = ("epoch", "batch_loss", "lr", "skipped_steps")


@dataclass(frozen=True)
class TrainResult:
    """What a job produced: its run, final metrics (last epoch's and the test set's) and registered version."""

    run_id: str
    metrics: dict[str, float]
    version: ModelVersion | None = None
    promoted: str | None = None
    checkpoint: str | None = None
    data_fingerprint: str | None = None


@dataclass
class Prepared:
    """A job with everything checked and built, before any training."""

    job: LoadedJob
    datasets: Datasets
    model: Any  # kiln.Model
    data_fingerprint: str | None
    code: dict[str, Any]


class _JobTracking(TrackingCallback):
    """Run tracking that also keeps the config file as an artifact and logs the test set's metrics at the end."""

    def __init__(self, *args: Any, job: LoadedJob, test: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.job, self.test = job, test
        self.test_metrics: dict[str, float] = {}

    def on_fit_start(self, model: Any) -> None:
        super().on_fit_start(model)
        file = self.job.path
        if self.run is None or file is None or not file.is_file():
            return
        if hashlib.sha256(file.read_bytes()).hexdigest() == self.job.sha256:  # (a rerun's file may have changed)
            self.run.log_artifact("job.toml", file)

    def on_fit_end(self, model: Any) -> None:
        try:
            if self.run is not None and self.test is not None and model.fit_status == "finished":
                results = model.evaluate(self.test)
                self.test_metrics = {f"test_{k}": float(v) for k, v in results.items()}
                self.run.log(self.test_metrics, step=int(model.global_step))
        finally:
            super().on_fit_end(model)


def open_store(store: Store | str | os.PathLike[str] | None) -> Store:
    """``store`` itself, or the Store at that path (None: ``$KILN_HOME`` or ``./.kiln``)."""
    return store if isinstance(store, Store) else Store(store)


def _data_fingerprint(config: JobConfig, datasets: Datasets, store: Store) -> str | None:
    if datasets.files:
        return files_fingerprint(datasets.files, cache=store.path / CACHE_FILE)
    try:
        parts = [d for d in (datasets.train, datasets.validation, datasets.test) if d is not None]
        return fingerprint(tuple(t for d in parts for t in _tensors(d)))
    except ConfigError:  # a factory's dataset kiln cannot hash (an iterable of batches): record none
        logger.info("the data of %s cannot be fingerprinted; none recorded", config.data.factory)
        return None


def _tensors(dataset: Any) -> list[Any]:
    x, y = getattr(dataset, "x", None), getattr(dataset, "y", None)
    if x is None:
        raise ConfigError("not an ArrayDataset")
    return [*(x if isinstance(x, tuple) else (x,)), *(() if y is None else (y,))]


def prepare(job: LoadedJob, store: Store, *, trust: Sequence[str] | None = None) -> Prepared:
    """Import the factories, read the data, fingerprint it, build the module and the Model; nothing trains yet.

    ``trust=None`` trusts the factories the config names (it is the user's own file); a config from elsewhere
    passes the modules it may import (``--trust``), to which ``KILN_TRUST`` is added.
    """
    config = job.config
    trusted = factory_modules(config) if trust is None else (*trust, *env_trust())
    paths = config.job.python_path
    factory = import_factory(config.model.module, key="model.module", python_path=paths, trust=trusted)
    data_factory = None
    if config.data.source == "factory":
        data_factory = import_factory(config.data.factory, key="data.factory", python_path=paths, trust=trusted)
    datasets = build_datasets(config.data, config.split, factory=data_factory)
    data_fingerprint = _data_fingerprint(config, datasets, store)
    model = build_model(config, build_module(config, factory))
    where = job.path.parent if job.path is not None else Path.cwd()
    code = {"git": git_commit(where), "versions": module_versions(config.model.module)}
    return Prepared(job, datasets, model, data_fingerprint, code)


def final_metrics(store: Store, run_id: str) -> dict[str, float]:
    """The latest value of each result metric of a run (loss, val_*, test_*), as the store holds them."""
    return {k: v for k, v in sorted(store.run(run_id).latest.items()) if k not in _NOT_RESULTS}


def run_job(
    job: LoadedJob,
    *,
    store: Store | str | os.PathLike[str] | None = None,
    trust: Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    register: bool = True,
) -> TrainResult:
    """Train ``job`` and record it as a run; register (and promote) when ``[register]`` says so and ``register``.

    Every check (keys, types, files, factories, data, names) happens before the first step of training.

    Example:
        >>> result = run_job(load_job("job.toml", ["fit.epochs=20"]), store=".kiln")
        >>> result.run_id, result.metrics["val_accuracy"]
    """
    opened = open_store(store)
    prepared = prepare(job, opened, trust=trust)
    config, model, datasets = job.config, prepared.model, prepared.datasets
    fit = config.fit
    record = {
        "job": config.to_dict(),
        "job_file": str(job.path) if job.path is not None else None,
        "job_sha256": job.sha256,
        "overrides": list(job.overrides),
        "code": prepared.code,
        **(params or {}),
    }
    all_tags = {"kiln.kind": "train", **({"kiln.job.sha256": job.sha256} if job.sha256 else {}), **(tags or {})}
    model.data_fingerprint = prepared.data_fingerprint
    tracking = _JobTracking(opened, config.job.name, record, tags=all_tags, job=job, test=datasets.test)
    model.fit(
        datasets.train, epochs=fit.epochs, batch_size=fit.batch_size, validation=datasets.validation,
        callbacks=[tracking], precision=fit.precision, mode=fit.mode, clip_grad_norm=fit.clip_grad_norm,
        accumulate=fit.accumulate, lr_schedule=fit.lr_schedule, seed=fit.seed, shuffle=fit.shuffle,
        drop_last=fit.drop_last, num_workers=fit.num_workers, on_nonfinite=fit.on_nonfinite,
        checkpoint=fit.checkpoint or None, checkpoint_every=fit.checkpoint_every,
        keep_checkpoints=fit.keep_checkpoints, resume="latest" if fit.resume else None, doctor=fit.doctor,
        verbose=fit.verbose,
    )  # fmt: skip
    run_id = model.run_id
    assert run_id is not None, "tracking sets the run id when fit starts"
    metrics = final_metrics(opened, run_id)
    version, promoted = None, None
    spec = config.register
    if register and spec.name:
        version = model.register(
            spec.name, store=opened, factory=config.model.module, config=config.model.config, metrics=metrics,
            description=spec.description or config.job.description or None, onnx=spec.onnx,
            tags={**spec.tags, **all_tags},
        )  # fmt: skip
        if spec.promote:
            opened.promote(spec.name, version.version, spec.promote)
            promoted = spec.promote
    return TrainResult(run_id, metrics, version, promoted, fit.checkpoint or None, prepared.data_fingerprint)


def rerun(
    run_id: str,
    *,
    store: Store | str | os.PathLike[str] | None = None,
    trust: Sequence[str] = (),
    overrides: Sequence[str] = (),
    register: bool = False,
) -> TrainResult:
    """Run the config a job run recorded again, as a new run tagged ``kiln.rerun_of``.

    The rerun starts fresh: it writes no checkpoints (unless ``fit.checkpoint=DIR`` is among ``overrides``) and
    registers nothing unless ``register``. The recorded factories come from the store, so they are imported only
    when ``trust`` (or ``KILN_TRUST``, or an entry point) trusts them. On the CPU with the recorded seed the new run's
    metrics equal the original's bit for bit.

    Example:
        >>> again = rerun("3f2a9c", store=".kiln", trust=["mynets"])
    """
    opened = open_store(store)
    origin = opened.run(run_id)
    recorded = origin.params.get("job")
    if not isinstance(recorded, Mapping):
        raise ConfigError(
            f"run {origin.id[:12]} ({origin.name}) records no job config: only runs started by "
            "`kiln train` (or a pipeline's train step) can be rerun"
        )
    fresh = [o for o in overrides if o.partition("=")[0].strip() == "fit.checkpoint"]
    config = job_from_dict(
        recorded, overrides=[*(() if fresh else ("fit.checkpoint=", "fit.resume=false")), *overrides]
    )
    if not register:
        config = replace(config, register=replace(config.register, name="", promote=""))
    file = origin.params.get("job_file")
    job = LoadedJob(
        config, Path(file) if isinstance(file, str) else None, origin.params.get("job_sha256"), tuple(overrides)
    )
    return run_job(
        job,
        store=opened,
        trust=trust,
        tags={"kiln.rerun_of": origin.id},
        params={"rerun_of": origin.id},
        register=register,
    )
