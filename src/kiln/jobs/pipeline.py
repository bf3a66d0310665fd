"""Pipelines: a short list of named steps in TOML, each step kind one typed dataclass.

A step's string values may name an earlier step's outputs, ``${train.run_id}`` or ``digits@${register.version}``;
a value that is only a reference takes the output's type (an int stays an int). Everything is checked when the
file is read, before the first step runs: step kinds, keys and types, that references name an earlier step and an
output that kind has, and every train step's job (keys, files, factories).

Example:
    >>> pipeline = load_pipeline("examples/pipeline/pipeline.toml")
    >>> [step.name for step in pipeline.steps]
    ['train', 'evaluate', 'gate', 'register', 'promote', 'export']
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, KilnError
from ..store.names import check_alias, check_name
from ._toml import read_toml
from .build import factory_modules, import_factory
from .config import LoadedJob, job_from_dict, load_job
from .typed import read_section, resolve_paths, show, suggest

__all__ = ["KINDS", "OUTPUTS", "Check", "Pipeline", "PipelineSection", "load_pipeline", "parse_check", "references"]

_REFERENCE = re.compile(r"\$\{([A-Za-z0-9_.-]+)\}")
_CHECK = re.compile(
    r"\s*([A-Za-z_][\w.]*)\s*(>=|<=|>|<)\s*(?:([a-z][a-z0-9_-]*)\s*(?:([+-])\s*([0-9.eE+-]+))?|"
    r"([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?))\s*"
)


def _help(text: str, **more: Any) -> dict[str, Any]:
    return {"help": text, **more}


@dataclass(kw_only=True)
class PipelineSection:
    """[pipeline]: the pipeline's name and what it trusts."""

    name: str = field(default="", metadata=_help("the execution's run name (default: the file's name)"))
    trust: list[str] = field(
        default_factory=list,
        metadata=_help(
            "modules whose factories may rebuild registered models (evaluate); the train steps' own are trusted"
        ),
    )
    workdir: str = field(
        default="",
        metadata=_help(
            "where train steps keep checkpoints, one folder per execution (default: <store>/jobs/pipelines)", path=True
        ),
    )
    keep_checkpoints: Literal["auto", "last", "all"] = field(
        default="auto",
        metadata=_help(
            "what stays of the train steps' checkpoints once the execution finishes (a stopped one keeps them all, "
            "to resume): 'auto' removes those of a run this execution registered and keeps the last of any other; "
            "'last' keeps each step's last; 'all' keeps everything"
        ),
    )


@dataclass(kw_only=True)
class Step:
    name: str = field(default="", metadata=_help("the step's name, used in ${name.output} (default: its kind)"))
    kind: str = ""


@dataclass(kw_only=True)
class TrainStep(Step):
    """Train a job (a path to its TOML, or the job inline); resumable from its checkpoints."""

    job: str | dict[str, Any] = field(
        metadata=_help("a job config file, or the job's sections inline", example='"job.toml"')
    )
    overrides: list[str] = field(default_factory=list, metadata=_help("section.key=value overrides of the job"))


@dataclass(kw_only=True)
class EvaluateStep(Step):
    """Evaluate a just-trained run or a registered model on a named dataset; its metrics are recorded."""

    run: str = field(
        default="", metadata=_help("a run to evaluate, e.g. ${train.run_id} (rebuilt from its last checkpoint)")
    )
    model: str = field(default="", metadata=_help("or a registered model, e.g. digits@production"))
    data: str = field(
        default="",
        metadata=_help(
            "the train step whose job's data to use (default: the run's own job, else the first train step)"
        ),
    )
    split: Literal["train", "validation", "test"] = field(default="test", metadata=_help("which split"))
    batch_size: int = field(default=256, metadata=_help("rows per evaluation batch"))


@dataclass(kw_only=True)
class GateStep(Step):
    """Stop the pipeline unless a metric beats the alias holder's (or a threshold)."""

    check: str = field(
        metadata=_help(
            "METRIC OP ALIAS [+|- MARGIN] or METRIC OP NUMBER", example='"test_accuracy >= production + 0.002"'
        )
    )
    model: str = field(default="", metadata=_help("the model whose alias holds the incumbent"))
    metrics: str = field(
        default="",
        metadata=_help(
            "the step whose metrics are the candidate's (default: the nearest evaluate or train step before the gate)"
        ),
    )


@dataclass(kw_only=True)
class RegisterStep(Step):
    """Register a run's model (from its last checkpoint) as the next version of a model."""

    run: str = field(metadata=_help("the run, e.g. ${train.run_id}", example='"${train.run_id}"'))
    model: str = field(metadata=_help("the model's name", example='"digits"'))
    description: str = field(default="", metadata=_help("the version's description"))
    tags: dict[str, str] = field(default_factory=dict, metadata=_help("the version's tags"))
    metrics: list[str] = field(
        default_factory=list,
        metadata=_help("steps whose metrics the version records (default: every earlier step about this run)"),
    )
    onnx: bool = field(default=True, metadata=_help("also export an ONNX graph"))


@dataclass(kw_only=True)
class PromoteStep(Step):
    """Point an alias at a version."""

    model: str = field(metadata=_help("the model's name", example='"digits"'))
    version: str | int = field(metadata=_help("the version, e.g. ${register.version}", example='"${register.version}"'))
    alias: str = field(metadata=_help("the alias, e.g. production", example='"production"'))


@dataclass(kw_only=True)
class ExportStep(Step):
    """Copy a registered version's package, hash-checked, into a new directory."""

    model: str = field(metadata=_help("a reference, e.g. digits@${register.version}", example='"digits@production"'))
    directory: str = field(metadata=_help("a new directory for the package", path=True, example='"exported"'))


@dataclass(kw_only=True)
class ShellStep(Step):
    """Run a command you wrote in this file (never one read from elsewhere); a non-zero exit fails the step."""

    command: list[str] = field(metadata=_help("the program and its arguments", example='["make", "report"]'))
    cwd: str = field(default="", metadata=_help("working directory (default: the pipeline file's)", path=True))
    timeout: float | None = field(default=None, metadata=_help("seconds before the command is stopped"))


KINDS: dict[str, type[Step]] = {"train": TrainStep, "evaluate": EvaluateStep, "gate": GateStep,
                                "register": RegisterStep, "promote": PromoteStep, "export": ExportStep,
                                "shell": ShellStep}  # fmt: skip
# What each kind's step outputs, for ${name.key}; "metrics" is a table (${evaluate.metrics.test_accuracy}).
OUTPUTS: dict[str, tuple[str, ...]] = {
    "train": ("run_id", "metrics", "checkpoint", "data_fingerprint"),
    "evaluate": ("metrics", "model", "run_id"),
    "gate": ("passed", "value", "required", "incumbent"),
    "register": ("version", "reference", "name", "run_id"),
    "promote": ("previous", "version", "alias"),
    "export": ("directory",),
    "shell": ("returncode",),
}


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline: its section, steps, each train step's job, and a hash of all of it (for resume)."""

    section: PipelineSection
    steps: list[Step]
    jobs: dict[str, LoadedJob]
    path: Path | None
    sha256: str
    trust: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": dataclasses.asdict(self.section),
            "steps": [dataclasses.asdict(step) for step in self.steps],
            "jobs": {name: job.config.to_dict() for name, job in self.jobs.items()},
        }


@dataclass(frozen=True)
class Check:
    """A parsed gate check: ``metric op alias [+|- margin]`` or ``metric op threshold``."""

    metric: str
    op: str
    alias: str | None
    margin: float
    threshold: float | None


def parse_check(text: str, *, key: str) -> Check:
    """Parse ``"test_accuracy >= production + 0.002"`` or ``"val_accuracy >= 0.95"``; ConfigError names ``key``."""
    match = _CHECK.fullmatch(text)
    if match is None:
        raise ConfigError(
            f'{key}: expected "METRIC OP ALIAS [+|- MARGIN]" or "METRIC OP NUMBER" with OP one of '
            f'>=, >, <=, < (e.g. "test_accuracy >= production + 0.002"), got {text!r}'
        )
    metric, op, alias, sign, margin, threshold = match.groups()
    try:
        amount = float(margin) if margin else 0.0
        limit = float(threshold) if threshold is not None else None
    except ValueError:
        raise ConfigError(f"{key}: {margin or threshold!r} is not a number") from None
    return Check(metric, op, alias, -amount if sign == "-" else amount, limit)


def references(value: Any) -> list[str]:
    """Every ``${...}`` reference inside ``value`` (strings, lists and tables)."""
    if isinstance(value, str):
        return _REFERENCE.findall(value)
    if isinstance(value, Mapping):
        return [ref for v in value.values() for ref in references(v)]
    if isinstance(value, list | tuple):
        return [ref for v in value for ref in references(v)]
    return []


def _read_step(index: int, raw: Any, base: Path) -> Step:
    key = f"steps[{index}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: expected a table ([[steps]]), got {show(raw)}")
    kind = raw.get("kind")
    if kind not in KINDS:
        near = suggest(str(kind), list(KINDS)) if isinstance(kind, str) else None
        hint = f"did you mean {show(near)}? " if near else ""
        raise ConfigError(f"{key}.kind: expected one of {', '.join(KINDS)}; {hint}got {show(kind)}")
    cls = KINDS[kind]
    label = f"steps[{index}] ({raw.get('name') or kind})"
    step = read_section(cls, resolve_paths(cls, raw, base), key=label)
    step.name = step.name or kind
    return step


def _check_references(steps: Sequence[Step]) -> None:
    kinds: dict[str, str] = {}
    for index, step in enumerate(steps):
        label = f"steps[{index}] ({step.name})"
        for name, value in dataclasses.asdict(step).items():
            for ref in references(value):
                source, _, output = ref.partition(".")
                if source not in kinds:
                    near = suggest(source, list(kinds))
                    hint = (
                        f"; did you mean {near}?"
                        if near
                        else ("; it is this step or a later one" if source in {s.name for s in steps} else "")
                    )
                    raise ConfigError(f"{label}.{name}: ${{{ref}}} names no earlier step{hint}")
                first = output.split(".")[0]
                if first not in OUTPUTS[kinds[source]]:
                    raise ConfigError(
                        f"{label}.{name}: ${{{ref}}}: a {kinds[source]} step outputs "
                        f"{', '.join(OUTPUTS[kinds[source]])}"
                    )
        if step.name in kinds:
            raise ConfigError(f"{label}.name: {step.name!r} is already the name of an earlier step")
        kinds[step.name] = step.kind


def _check_step(index: int, step: Step, steps: Sequence[Step]) -> None:
    label = f"steps[{index}] ({step.name})"
    earlier = {s.name: s.kind for s in steps[:index]}
    named: list[tuple[str, str, tuple[str, ...]]] = []  # (key, step name, kinds it may be)
    try:
        check_name(step.name, what="step name")
        if isinstance(step, GateStep):
            if parse_check(step.check, key=f"{label}.check").alias and not step.model:
                raise ConfigError(f"{label}.model: the check compares with an alias; name the model (e.g. digits)")
            if step.metrics:
                named.append(("metrics", step.metrics, ("train", "evaluate")))
        if isinstance(step, EvaluateStep):
            if bool(step.run) == bool(step.model):
                raise ConfigError(
                    f"{label}: set run (e.g. ${{train.run_id}}) or model (e.g. digits@production), one of them"
                )
            if step.data:
                named.append(("data", step.data, ("train",)))
        if isinstance(step, RegisterStep):
            named.extend(("metrics", name, ("train", "evaluate")) for name in step.metrics)
        if isinstance(step, RegisterStep | PromoteStep) and not references(step.model):
            check_name(step.model)
        if isinstance(step, PromoteStep) and not references(step.alias):
            check_alias(step.alias)
        if isinstance(step, ShellStep) and not step.command:
            raise ConfigError(f"{label}.command: empty; write the program and its arguments")
    except ConfigError as error:
        raise error if str(error).startswith("steps[") else ConfigError(f"{label}: {error}") from None
    except KilnError as error:
        raise ConfigError(f"{label}: {error}") from None
    for key, name, kinds in named:
        if earlier.get(name) not in kinds:
            raise ConfigError(f"{label}.{key}: {name!r} is no earlier {' or '.join(kinds)} step")


def _load_jobs(steps: Sequence[Step], base: Path) -> dict[str, LoadedJob]:
    jobs = {}
    for index, step in enumerate(steps):
        if not isinstance(step, TrainStep):
            continue
        label = f"steps[{index}] ({step.name})"
        try:
            if isinstance(step.job, str):
                job = load_job(base / step.job, step.overrides)
            else:
                config = job_from_dict(step.job, base=base, overrides=step.overrides, name=step.name)
                job = LoadedJob(config, None, None, tuple(step.overrides))
            for key, path in (("model.module", job.config.model.module), ("data.factory", job.config.data.factory)):
                if path:  # fail now, not after the steps before it ran
                    import_factory(
                        path, key=key, python_path=job.config.job.python_path, trust=factory_modules(job.config)
                    )
        except KilnError as error:
            raise ConfigError(f"{label}.job: {error}") from None
        jobs[step.name] = job
    return jobs


def _apply_overrides(steps: Sequence[Step], overrides: Sequence[str]) -> None:
    """Add ``STEP.section.key=value`` overrides to the train step ``STEP``'s own."""
    by_name = {step.name: step for step in steps}
    for override in overrides:
        name, dot, rest = override.partition(".")
        step = by_name.get(name)
        if step is None or not dot:
            near = suggest(name, list(by_name))
            hint = f"did you mean {near}?" if near else "write STEP.section.key=value (e.g. train.fit.epochs=20)"
            raise ConfigError(f"{override.partition('=')[0]}: no step {name!r}; {hint}")
        if not isinstance(step, TrainStep):
            raise ConfigError(
                f"{override.partition('=')[0]}: {name!r} is a {step.kind} step; only a train step's "
                "job takes overrides (edit the pipeline file for the others)"
            )
        step.overrides.append(rest)


def load_pipeline(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Pipeline:
    """Read and validate a pipeline file, its train steps' jobs included; nothing runs yet.

    ``overrides`` (``train.fit.epochs=20``) are added to the named train step's job overrides.
    """
    file = Path(path).absolute()
    data, _ = read_toml(file, what="pipeline")
    unknown = set(data) - {"pipeline", "steps"}
    if unknown:
        name = sorted(unknown)[0]
        near = suggest(name, ["pipeline", "steps"])
        raise ConfigError(f"{name}: unknown key; " + (f"did you mean {near}?" if near else "valid: pipeline, steps"))
    section = read_section(
        PipelineSection, resolve_paths(PipelineSection, data.get("pipeline", {}), file.parent), key="pipeline"
    )
    section.name = section.name or file.stem
    try:
        check_name(section.name, what="pipeline name")
    except KilnError as error:
        raise ConfigError(f"pipeline.name: {error}") from None
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ConfigError("steps: missing; add the steps as [[steps]] tables, each with a kind and its keys")
    steps = [_read_step(i, item, file.parent) for i, item in enumerate(raw_steps)]
    _apply_overrides(steps, overrides)
    _check_references(steps)
    for index, step in enumerate(steps):
        _check_step(index, step, steps)
    jobs = _load_jobs(steps, file.parent)
    trust = tuple(dict.fromkeys([*section.trust, *(m for job in jobs.values() for m in factory_modules(job.config))]))
    draft = Pipeline(section, steps, jobs, file, "", trust)
    digest = hashlib.sha256(json.dumps(draft.to_dict(), sort_keys=True).encode()).hexdigest()
    return dataclasses.replace(draft, sha256=digest)
