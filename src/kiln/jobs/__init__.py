"""kiln.jobs: reproducible training jobs (`kiln train job.toml`) and pipelines (`kiln run pipeline.toml`).

A job config is TOML read into typed dataclasses (:mod:`kiln.jobs.config`); a run records everything needed to
run it again (`kiln runs rerun`). Names are imported on first use, so `import kiln.jobs` costs nothing.

Example:
    >>> from kiln.jobs import load_job, run_job
    >>> result = run_job(load_job("job.toml", ["fit.epochs=20"]), store=".kiln")
    >>> result.metrics["val_accuracy"]
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "JobConfig": "kiln.jobs.config",
    "LoadedJob": "kiln.jobs.config",
    "load_job": "kiln.jobs.config",
    "TrainResult": "kiln.jobs.train",
    "run_job": "kiln.jobs.train",
    "rerun": "kiln.jobs.train",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
