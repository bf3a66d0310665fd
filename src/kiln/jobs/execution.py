"""Run a pipeline, recording each execution in the store through its public API, and resume one that stopped.

How an execution is recorded (the store has no pipeline tables; see docs/pipelines.md):

- one run named after the pipeline, tagged ``kiln.kind = pipeline`` and ``kiln.pipeline.sha256`` (the hash of the
  resolved pipeline, its train steps' jobs included); params ``pipeline`` (the resolved pipeline), ``file`` and
  ``sha256``; its status is the execution's (finished, failed, killed);
- the artifact ``pipeline.json``, rewritten at every step's start and end: each step's name, kind, status
  (pending, running, finished, failed, killed), start and end times, duration, resolved inputs, outputs, error;
- metrics: ``steps_finished``, ``<step>.seconds``, an evaluate step's ``<step>.<metric>``, a gate's
  ``<step>.value`` and ``<step>.required``;
- what the steps make points back at it: train runs and registered versions carry the tags ``kiln.pipeline.run``
  (this run's id) and ``kiln.pipeline.step``.

``resume=True`` continues the newest execution of the same pipeline when it did not finish (killed or failed) and
the pipeline is unchanged: finished steps are skipped and their recorded outputs reused, the step that was running
runs again (a train step from its last checkpoint, in the execution's own folder under ``workdir``).

A stopped execution keeps every checkpoint, for that resume. A finished one prunes them as ``[pipeline]
keep_checkpoints`` says (default ``auto``): a train step whose run this execution registered loses its checkpoints
(the version holds the weights), any other keeps its last one (its run can still be evaluated or registered later);
the execution's folder goes when nothing is left in it. Only checkpoint files are removed, never anything else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, KilnError
from ..store import Run, RunInfo, Store
from ..store.runs import jsonable
from ..train.checkpoint import list_checkpoints
from .pipeline import Pipeline
from .steps import Context, GateFailed, execute, resolved
from .train import open_store

__all__ = [
    "ARTIFACT",
    "ExecutionResult",
    "find_resumable",
    "prune_checkpoints",
    "read_record",
    "run_pipeline",
    "summarize",
]

logger = logging.getLogger(__name__)

ARTIFACT = "pipeline.json"
FORMAT = "kiln.pipeline/1"


@dataclass(frozen=True)
class ExecutionResult:
    """A finished execution: its run id, whether it resumed an earlier one, and each step's record."""

    run_id: str
    resumed: bool
    steps: list[dict[str, Any]]

    def outputs(self, step: str) -> dict[str, Any]:
        return next(entry["outputs"] for entry in self.steps if entry["name"] == step)


def read_record(store: Store, run: RunInfo) -> dict[str, Any]:
    """The ``pipeline.json`` of an execution run (its steps and their status)."""
    blob = run.artifacts.get(ARTIFACT)
    if blob is None:
        raise ConfigError(f"run {run.id[:12]} ({run.name}) has no {ARTIFACT}: it is not a pipeline execution")
    record = json.loads(bytes(store.blobs.read(blob, label=f"run {run.id[:12]} {ARTIFACT}")))
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ConfigError(f"run {run.id[:12]}: {ARTIFACT} is not a {FORMAT} record")
    return record


def find_resumable(store: Store, pipeline: Pipeline) -> RunInfo | None:
    """The newest execution of ``pipeline`` when it stopped before finishing; None when there is none to resume."""
    name = pipeline.section.name
    executions = [r for r in store.runs(name=name, limit=50) if r.tags.get("kiln.kind") == "pipeline"]
    if not executions or executions[0].status == "finished":
        return None
    newest = executions[0]
    if newest.status in ("running", "stale"):
        where = newest.process.get("host", "?")
        raise ConfigError(
            f"execution {newest.id[:12]} of pipeline {name!r} is still {newest.status} (pid "
            f"{newest.process.get('pid', '?')} on {where}); let it finish, or stop it first"
        )
    if newest.params.get("sha256") != pipeline.sha256:
        raise ConfigError(
            f"the pipeline (or a job it trains) changed since execution {newest.id[:12]} stopped, so "
            "it cannot resume; run without --resume to start a new execution"
        )
    return store.run(newest.id)


class _Recorder:
    """Writes the execution's record as the run's artifact (one small blob per change)."""

    def __init__(self, run: Run, record: dict[str, Any]) -> None:
        self.run, self.record = run, record

    def save(self) -> None:
        with tempfile.TemporaryDirectory(prefix="kiln-pipeline-") as folder:
            path = Path(folder) / ARTIFACT
            path.write_text(json.dumps(jsonable(self.record), indent=1))
            self.run.log_artifact(ARTIFACT, path)


def summarize(outputs: dict[str, Any] | None) -> str:
    """A step's outputs on one line: ``run_id=3f2a9c0d1e2f  test_accuracy=0.9777``."""
    if not outputs:
        return "-"
    parts: list[str] = []
    for key, value in outputs.items():
        if key == "metrics" and isinstance(value, dict):
            parts.extend(f"{k}={v:.4g}" for k, v in sorted(value.items()))
        elif value is not None and key != "checkpoint":
            shown = value[:12] if key == "run_id" and isinstance(value, str) else value
            if key == "data_fingerprint" and isinstance(value, str):
                shown = value[:19] + "..."  # sha256: and 12 hex digits
            parts.append(f"{key}={shown:.4g}" if isinstance(shown, float) else f"{key}={shown}")
    return "  ".join(parts) or "-"


def _error_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:500] if text else type(error).__name__


def _start(store: Store, pipeline: Pipeline, resume: bool, log: Callable[[str], None]) -> tuple[Run, dict, bool]:
    previous = find_resumable(store, pipeline) if resume else None
    if previous is not None:
        record = read_record(store, previous)
        done = sum(entry["status"] == "finished" for entry in record["steps"])
        log(
            f"resuming execution {previous.id} of {pipeline.section.name} ({done}/{len(record['steps'])} steps "
            f"finished before)"
        )
        return store.resume_run(previous.id), record, True
    if resume:
        log(f"no stopped execution of {pipeline.section.name} to resume: starting a new one")
    params = {
        "pipeline": pipeline.to_dict(),
        "file": str(pipeline.path) if pipeline.path else None,
        "sha256": pipeline.sha256,
    }
    run = store.start_run(
        pipeline.section.name, params=params, tags={"kiln.kind": "pipeline", "kiln.pipeline.sha256": pipeline.sha256}
    )
    steps = [
        {
            "name": s.name,
            "kind": s.kind,
            "status": "pending",
            "started": None,
            "ended": None,
            "seconds": None,
            "inputs": None,
            "outputs": None,
            "error": None,
        }
        for s in pipeline.steps
    ]
    return run, {"format": FORMAT, "steps": steps}, False


def _metrics(name: str, kind: str, outputs: dict[str, Any], seconds: float) -> dict[str, float]:
    found = {f"{name}.seconds": seconds}
    if kind == "evaluate":
        found.update({f"{name}.{k}": float(v) for k, v in outputs["metrics"].items()})
    if kind == "gate":
        found.update({f"{name}.{k}": float(outputs[k]) for k in ("value", "required") if outputs.get(k) is not None})
    return found


def prune_checkpoints(workdir: Path, steps: list[dict[str, Any]], keep: str) -> list[Path]:
    """Prune a finished execution's checkpoints in ``workdir`` as ``keep`` says (see the module docstring).

    ``steps`` is the execution's record. Returns the checkpoint files removed. Each train step's folder, then
    ``workdir`` itself, is removed when it is left empty; anything else in them stays.
    """
    if keep == "all":
        return []
    registered = {entry["outputs"]["run_id"] for entry in steps if entry["kind"] == "register"}
    removed: list[Path] = []
    for entry in steps:
        if entry["kind"] != "train":
            continue
        folder = workdir / entry["name"]
        found = list_checkpoints(folder)
        drop = found if keep == "auto" and entry["outputs"]["run_id"] in registered else found[:-1]
        for path in drop:
            try:
                path.unlink()
            except OSError as error:  # the execution finished all the same: say so, do not fail it
                logger.warning("could not remove checkpoint %s: %s", path, error)
                continue
            removed.append(path)
        _remove_if_empty(folder)
    _remove_if_empty(workdir)
    return removed


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (a checkpoint kept, or files that are not ours), or already gone
        folder.rmdir()


def run_pipeline(
    pipeline: Pipeline,
    *,
    store: Store | str | os.PathLike[str] | None = None,
    resume: bool = False,
    log: Callable[[str], None] = logger.info,
) -> ExecutionResult:
    """Run the steps in order, recording the execution; a failed step (a failed gate too) stops it and raises.

    Example:
        >>> result = run_pipeline(load_pipeline("pipeline.toml"), store=".kiln", resume=True, log=print)
        >>> result.outputs("register")["version"]
        4
    """
    opened = open_store(store)
    run, record, resumed = _start(opened, pipeline, resume, log)
    workdir = Path(pipeline.section.workdir or opened.path / "jobs" / "pipelines") / run.id
    context = Context(opened, pipeline, run.id, workdir, {}, log)
    recorder = _Recorder(run, record)
    recorder.save()
    try:
        for index, step in enumerate(pipeline.steps):
            entry = record["steps"][index]
            if entry["status"] == "finished":
                context.outputs[step.name] = entry["outputs"]
                log(f"step {step.name} ({step.kind}): finished before, skipped")
                continue
            concrete = resolved(step, context)
            entry.update(
                status="running",
                started=time.time(),
                ended=None,
                seconds=None,
                error=None,
                outputs=None,
                inputs=dataclasses.asdict(concrete),
            )
            recorder.save()
            log(f"step {index + 1}/{len(pipeline.steps)} {step.name} ({step.kind})")
            started = time.monotonic()
            try:
                outputs = execute(concrete, context)
            except BaseException as error:
                status = "killed" if isinstance(error, KeyboardInterrupt) else "failed"
                entry.update(
                    status=status,
                    ended=time.time(),
                    seconds=time.monotonic() - started,
                    error=_error_line(error),
                    outputs=getattr(error, "outputs", None),
                )
                recorder.save()
                raise
            seconds = time.monotonic() - started
            entry.update(status="finished", ended=time.time(), seconds=seconds, outputs=jsonable(outputs))
            recorder.save()
            run.log(
                {**_metrics(step.name, step.kind, outputs, seconds), "steps_finished": float(index + 1)}, step=index
            )
            context.outputs[step.name] = entry["outputs"]
            log(f"step {step.name}: finished in {seconds:.1f}s  {summarize(entry['outputs'])}")
    except KeyboardInterrupt:
        run.finish("killed")
        raise
    except GateFailed:
        run.finish("failed")
        raise
    except BaseException as error:
        run.finish("failed")
        if isinstance(error, KilnError):
            raise type(error)(f"step {step.name} ({step.kind}): {error}") from error
        raise
    run.finish("finished")
    removed = prune_checkpoints(workdir, record["steps"], pipeline.section.keep_checkpoints)
    if removed:
        keep = pipeline.section.keep_checkpoints
        log(f"removed {len(removed)} checkpoint file(s) of this finished execution (keep_checkpoints = {keep!r})")
    return ExecutionResult(run.id, resumed, record["steps"])
