"""What each pipeline step kind does: ``execute(step, context) -> outputs``.

Steps are written to be safe to run again after a crash: a train step resumes from its checkpoints, a register
step finds the version it already published (by its ``kiln.pipeline.run`` and ``kiln.pipeline.step`` tags), a
promote is a no-op when the alias is already there, an export accepts the directory it already wrote.
"""

from __future__ import annotations

import dataclasses
import operator
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kiln

from ..errors import ConfigError, KilnError, NotFoundError
from ..store import ModelVersion, Store
from .config import LoadedJob
from .pipeline import (
    EvaluateStep,
    ExportStep,
    GateStep,
    Pipeline,
    PromoteStep,
    RegisterStep,
    ShellStep,
    Step,
    TrainStep,
    parse_check,
    references,
)
from .restore import example_input, job_datasets, restore_run
from .train import run_job

__all__ = ["Context", "GateFailed", "execute", "resolved", "substitute"]

_OPERATORS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, ">": operator.gt, "<=": operator.le,
                                                         "<": operator.lt}  # fmt: skip
_NEGATED = {">=": "<", ">": "<=", "<=": ">", "<": ">="}
_PREFIX = {"train": "train_", "validation": "val_", "test": "test_"}


class GateFailed(KilnError):
    """A gate's check failed: the candidate is not promoted. The message is the one line to show."""

    def __init__(self, message: str, outputs: dict[str, Any]) -> None:
        super().__init__(message)
        self.outputs = outputs


@dataclass
class Context:
    """What steps share: the store, the pipeline, this execution's run id and workdir, finished steps' outputs."""

    store: Store
    pipeline: Pipeline
    run_id: str
    workdir: Path
    outputs: dict[str, dict[str, Any]]
    log: Callable[[str], None]


def _lookup(ref: str, outputs: Mapping[str, Any]) -> Any:
    value: Any = outputs
    for part in ref.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise ConfigError(f"${{{ref}}}: the step's outputs have no {part!r}")
        value = value[part]
    return value


def substitute(value: Any, outputs: Mapping[str, Any]) -> Any:
    """``value`` with each ``${step.key}`` replaced by that output (whole-string references keep their type)."""
    if isinstance(value, str):
        refs = references(value)
        if len(refs) == 1 and value == f"${{{refs[0]}}}":
            return _lookup(refs[0], outputs)
        for ref in refs:
            value = value.replace(f"${{{ref}}}", str(_lookup(ref, outputs)))
        return value
    if isinstance(value, list):
        return [substitute(v, outputs) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, outputs) for k, v in value.items()}
    return value


def _tags(context: Context, step: Step) -> dict[str, str]:
    return {"kiln.pipeline.run": context.run_id, "kiln.pipeline.step": step.name}


def _train(step: TrainStep, context: Context) -> dict[str, Any]:
    job = context.pipeline.jobs[step.name]
    if job.config.register.name:
        context.log(f"  {step.name}: the job's [register] is left to the pipeline's register step")
    checkpoint = context.workdir / step.name
    config = dataclasses.replace(
        job.config,
        fit=dataclasses.replace(job.config.fit, checkpoint=str(checkpoint), resume=True),
        register=dataclasses.replace(job.config.register, name="", promote=""),
    )
    result = run_job(
        LoadedJob(config, job.path, job.sha256, job.overrides),
        store=context.store,
        tags=_tags(context, step),
        params={"pipeline_run": context.run_id},
        register=False,
    )
    return {
        "run_id": result.run_id,
        "metrics": result.metrics,
        "checkpoint": str(checkpoint),
        "data_fingerprint": result.data_fingerprint,
    }


def _data_job(context: Context, name: str) -> LoadedJob:
    if name:
        return context.pipeline.jobs[name]
    if not context.pipeline.jobs:
        raise ConfigError("evaluate: the pipeline has no train step whose data to use; set data")
    return next(iter(context.pipeline.jobs.values()))


def _evaluate(step: EvaluateStep, context: Context) -> dict[str, Any]:
    trust = context.pipeline.trust
    if step.run:
        _, config, module = restore_run(context.store, step.run, trust=trust)
        if step.data:
            config = _data_job(context, step.data).config
    else:
        from ..export.loader import load_package

        config = _data_job(context, step.data).config
        module = load_package(step.model, store=context.store, runtime="torch", trust=trust).model
    dataset = getattr(job_datasets(config, trust=trust), step.split)
    if dataset is None:
        raise ConfigError(f"evaluate: the job has no {step.split} set; set its split.{step.split} or data path")
    model = kiln.Model(module, loss=config.model.loss, metrics=config.model.metrics, device=config.model.device)
    results = model.evaluate(dataset, batch_size=step.batch_size)
    metrics = {f"{_PREFIX[step.split]}{k}": float(v) for k, v in results.items()}
    return {"metrics": metrics, "model": step.model or None, "run_id": step.run or None}


def _candidate(step: GateStep, context: Context, metric: str) -> float:
    source = step.metrics
    if not source:
        kinds = {s.name: s.kind for s in context.pipeline.steps}
        earlier = [name for name in context.outputs if kinds[name] in ("evaluate", "train")]
        if not earlier:
            raise ConfigError("gate: no earlier train or evaluate step has metrics to check; set metrics")
        source = earlier[-1]
    metrics = context.outputs[source].get("metrics") or {}
    if metric not in metrics:
        raise ConfigError(f"gate: step {source!r} measured no {metric!r}; it has {', '.join(sorted(metrics))}")
    return float(metrics[metric])


def _shown(a: float, b: float) -> tuple[str, str]:
    """``a`` and ``b`` with the fewest decimals (at least 3) that tell them apart: ``0.981`` and ``0.983``."""
    for decimals in range(3, 13):
        left, right = f"{a:.{decimals}f}", f"{b:.{decimals}f}"
        if left != right or a == b:
            return left, right
    return repr(a), repr(b)


def _gate(step: GateStep, context: Context) -> dict[str, Any]:
    check = parse_check(step.check, key="gate.check")
    value = _candidate(step, context, check.metric)
    incumbent: str | None = None
    if check.alias is None:
        assert check.threshold is not None
        required, where = check.threshold, step.check.strip()
    else:
        try:
            holder = context.store.version(f"{step.model}@{check.alias}")
        except NotFoundError:
            context.log(f"  {step.name}: no {step.model}@{check.alias} yet: nothing to beat")
            return {"passed": True, "value": value, "required": None, "incumbent": None}
        incumbent, where = holder.reference, f"{step.model}@{check.alias} = v{holder.version}"
        if check.metric not in holder.metrics:
            raise GateFailed(
                f"not promoted: {where} records no {check.metric} to compare with (it records "
                f"{', '.join(sorted(holder.metrics)) or 'no metrics'})",
                {"passed": False, "value": value, "required": None, "incumbent": incumbent},
            )
        required = holder.metrics[check.metric] + check.margin
    outputs = {
        "passed": _OPERATORS[check.op](value, required),
        "value": value,
        "required": required,
        "incumbent": incumbent,
    }
    shown_value, shown_required = _shown(value, required)
    if not outputs["passed"]:
        raise GateFailed(f"not promoted: {shown_value} {_NEGATED[check.op]} {shown_required} ({where})", outputs)
    context.log(f"  {step.name}: {shown_value} {check.op} {shown_required} ({where}): passed")
    return outputs


def _register(step: RegisterStep, context: Context) -> dict[str, Any]:
    store, tags = context.store, _tags(context, step)
    try:
        done = [v for v in store.versions(step.model) if all(v.tags.get(k) == t for k, t in tags.items())]
    except NotFoundError:
        done = []
    if done:  # published before a crash, recorded as finished only now
        version: ModelVersion = done[-1]
    else:
        from ..export import register_module

        info, config, module = restore_run(store, step.run, trust=context.pipeline.trust)
        names = step.metrics or [name for name, out in context.outputs.items() if out.get("run_id") == info.id]
        metrics = {k: v for name in names for k, v in (context.outputs[name].get("metrics") or {}).items()}
        example = example_input(job_datasets(config, trust=context.pipeline.trust).train)
        version = register_module(
            module, step.model, store=store, example_input=example, factory=config.model.module,
            config=config.model.config, metrics=metrics, run_id=info.id,
            data_fingerprint=info.params.get("data_fingerprint"), description=step.description or None,
            tags={**step.tags, **tags}, onnx=step.onnx,
        )  # fmt: skip
    return {"version": version.version, "reference": version.reference, "name": version.name, "run_id": version.run_id}


def _promote(step: PromoteStep, context: Context) -> dict[str, Any]:
    version = step.version
    if isinstance(version, str):
        version = version.rsplit("@", 1)[-1]
        if not version.isdigit():
            raise ConfigError(f"promote.version: expected a version number, got {step.version!r}")
    previous = context.store.promote(step.model, int(version), step.alias)
    return {"previous": previous, "version": int(version), "alias": step.alias}


def _export(step: ExportStep, context: Context) -> dict[str, Any]:
    from ..export.package import DirectorySink

    version = context.store.version(step.model)
    target = Path(step.directory)
    if target.is_dir() and {p.name for p in target.iterdir()} == set(version.files):
        from ..store.blobs import Blob, read_verified

        for name, blob in version.files.items():  # written before a crash: accept it only if every byte matches
            read_verified(target / name, Blob(blob.sha256, blob.size), label=f"{target / name}")
        return {"directory": str(target)}
    sink = DirectorySink(target)
    try:
        for name in sorted(version.files):
            handle = sink.open(name)
            handle.write(context.store.read(version, name))  # hash-checked as it is read
            if sink.close(name, handle) != version.files[name]:
                raise KilnError(f"export: {name} changed while it was copied; export again")
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    return {"directory": str(target)}


def _shell(step: ShellStep, context: Context) -> dict[str, Any]:
    base = context.pipeline.path.parent if context.pipeline.path is not None else Path.cwd()
    try:
        done = subprocess.run(
            [str(part) for part in step.command], cwd=step.cwd or base, timeout=step.timeout, check=False
        )
    except FileNotFoundError:
        raise ConfigError(f"shell.command: no program {step.command[0]!r} on PATH") from None
    except subprocess.TimeoutExpired:
        raise KilnError(f"shell: {step.command[0]} did not finish within {step.timeout} s") from None
    if done.returncode != 0:
        raise KilnError(f"shell: {' '.join(map(str, step.command))} exited with status {done.returncode}")
    return {"returncode": done.returncode}


_EXECUTORS: dict[type[Step], Callable[[Any, Context], dict[str, Any]]] = {
    TrainStep: _train, EvaluateStep: _evaluate, GateStep: _gate, RegisterStep: _register, PromoteStep: _promote,
    ExportStep: _export, ShellStep: _shell,
}  # fmt: skip


def resolved(step: Step, context: Context) -> Step:
    """The step with every ``${...}`` in its values replaced by the outputs of the steps before it."""
    values = {f.name: substitute(getattr(step, f.name), context.outputs) for f in dataclasses.fields(step)}
    return type(step)(**values)


def execute(step: Step, context: Context) -> dict[str, Any]:
    """Run one (resolved) step and return its outputs."""
    return _EXECUTORS[type(step)](step, context)
