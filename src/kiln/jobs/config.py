"""The job config of ``kiln train job.toml``: one typed dataclass per section, the single source of truth.

Sections map onto kiln's API one to one: ``[model]`` is the module's factory plus the ``kiln.Model`` options,
``[data]`` and ``[split]`` build the datasets, ``[fit]`` holds ``Model.fit``'s options and ``[register]`` publishes
the result. The same classes read the TOML file, parse ``section.key=value`` overrides and generate
``docs/job.schema.json`` (``python -m kiln.jobs.schema``).

Example:
    >>> job = load_job("job.toml", ["fit.epochs=20", "model.lr=3e-4"])
    >>> job.config.fit.epochs, job.sha256[:12]
    (20, '5d41402abc4b')
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, KilnError
from ..train.losses import LOSSES
from ..train.metrics import METRICS
from ..train.optim import OPTIMIZERS
from ..train.schedules import KINDS as SCHEDULES
from ._toml import read_toml
from .typed import absolute_defaults, apply_overrides, read_section, resolve_paths

__all__ = [
    "SOURCES",
    "DataSection",
    "FitSection",
    "JobConfig",
    "JobSection",
    "LoadedJob",
    "ModelSection",
    "RegisterSection",
    "SplitSection",
    "job_from_dict",
    "load_job",
]

SOURCES = ("arrays", "csv", "image_folder", "jsonl", "audio_folder", "factory")


def _help(text: str, **more: Any) -> dict[str, Any]:
    return {"help": text, **more}


@dataclass(kw_only=True)
class JobSection:
    """[job]: the run's name and where the factories' modules are found."""

    name: str = field(default="", metadata=_help("the run's name (default: the config file's name, e.g. 'job')"))
    description: str = field(default="", metadata=_help("free text, recorded with the run"))
    python_path: list[str] = field(
        default_factory=lambda: ["."],
        metadata=_help(
            "folders searched for the factories' modules after the installed packages, relative to the config file",
            path=True,
        ),
    )


@dataclass(kw_only=True)
class ModelSection:
    """[model]: the module's factory and the kiln.Model options (loss, optimizer, lr, metrics, kernels)."""

    module: str = field(
        metadata=_help(
            "the factory that builds the torch.nn.Module, 'package.module:function'; "
            "trusted because your own config names it",
            example='"mypkg.nets:Net"',
        )
    )
    config: dict[str, Any] = field(default_factory=dict, metadata=_help("keyword arguments of the factory"))
    loss: str = field(default="cross_entropy", metadata=_help("the loss", choices=sorted(LOSSES)))
    optimizer: str = field(default="adamw", metadata=_help("the optimizer", choices=sorted(OPTIMIZERS)))
    lr: float | None = field(default=None, metadata=_help("learning rate (default: the optimizer's)"))
    optimizer_options: dict[str, Any] = field(
        default_factory=dict, metadata=_help("more optimizer arguments (weight_decay, betas, ...)")
    )
    metrics: list[str] = field(
        default_factory=list, metadata=_help("metrics computed on validation and test data", choices=list(METRICS))
    )
    kernels: Literal["auto", "on", "off"] = field(default="auto", metadata=_help("kiln's fused kernels"))
    device: str = field(default="auto", metadata=_help("'auto' (CUDA, then MPS, then CPU), 'cpu', 'cuda', 'cuda:1'"))


@dataclass(kw_only=True)
class DataSection:
    """[data]: a kiln.data source by name with its arguments, or a factory returning datasets."""

    source: str = field(
        metadata=_help(
            "arrays (.npz/.npy), csv, image_folder, jsonl, audio_folder, or factory",
            choices=SOURCES,
            example='"arrays"',
        )
    )
    path: str = field(default="", metadata=_help("the file or folder to read (not for source = 'factory')", path=True))
    factory: str = field(
        default="",
        metadata=_help(
            "for source = 'factory': 'package.module:function' returning a dataset, (train, validation[, test]) or "
            "{'train': ..., 'validation': ..., 'test': ...}"
        ),
    )
    options: dict[str, Any] = field(
        default_factory=dict,
        metadata=_help(
            "keyword arguments of the source (read_csv's label, ImageFolder's size, the factory's own, ...); for "
            "arrays: x and y, the names of the arrays in the .npz"
        ),
    )
    validation_path: str = field(default="", metadata=_help("a separate file or folder for validation", path=True))
    test_path: str = field(default="", metadata=_help("a separate file or folder for the test set", path=True))
    to_memory: bool = field(default=True, metadata=_help("decode image and audio folders once into memory"))


@dataclass(kw_only=True)
class SplitSection:
    """[split]: fractions of the data held out for validation and test, shuffled with a seed."""

    validation: float = field(default=0.0, metadata=_help("fraction of all rows for validation (0: none)"))
    test: float = field(default=0.0, metadata=_help("fraction of all rows for the test set, evaluated after fit"))
    seed: int = field(default=0, metadata=_help("the shuffle's seed"))


@dataclass(kw_only=True)
class FitSection:
    """[fit]: the options of Model.fit."""

    epochs: int = field(default=1, metadata=_help("passes over the training data"))
    batch_size: int = field(default=32, metadata=_help("rows per batch (per process)"))
    seed: int = field(
        default=0,
        metadata=_help("seeds the initial weights and the data order: same seed, same run (bit for bit on CPU)"),
    )
    lr_schedule: str | None = field(default=None, metadata=_help("learning-rate schedule", choices=list(SCHEDULES)))
    precision: Literal["fp32", "bf16", "fp16"] = field(default="fp32", metadata=_help("autocast precision"))
    mode: Literal["eager", "graph"] = field(default="eager", metadata=_help("graph: train through torch.compile"))
    clip_grad_norm: float | None = field(default=None, metadata=_help("clip the global gradient norm"))
    accumulate: int = field(default=1, metadata=_help("batches per optimizer step"))
    shuffle: bool = field(default=True, metadata=_help("shuffle the training rows every epoch"))
    drop_last: bool = field(default=False, metadata=_help("drop the last incomplete batch"))
    num_workers: int | None = field(default=None, metadata=_help("DataLoader workers for file sources"))
    on_nonfinite: Literal["stop", "skip"] = field(default="stop", metadata=_help("on a NaN/Inf loss"))
    checkpoint: str = field(default="", metadata=_help("folder for exact-resume checkpoints (empty: none)", path=True))
    checkpoint_every: int | Literal["epoch"] = field(
        default="epoch", metadata=_help("'epoch' or a number of optimizer steps")
    )
    keep_checkpoints: int = field(default=3, metadata=_help("newest checkpoints kept"))
    resume: bool = field(default=False, metadata=_help("continue from the newest checkpoint in fit.checkpoint"))
    doctor: bool = field(default=True, metadata=_help("run the gradient doctor"))
    verbose: int | Literal["auto"] = field(default="auto", metadata=_help("'auto', 1, or 0 for silence"))


@dataclass(kw_only=True)
class RegisterSection:
    """[register]: publish the trained model as the next version of a model, optionally moving an alias."""

    name: str = field(default="", metadata=_help("the model's name (empty: do not register)"))
    promote: str = field(default="", metadata=_help("an alias to point at the new version (e.g. 'staging')"))
    description: str = field(default="", metadata=_help("the version's description"))
    tags: dict[str, str] = field(default_factory=dict, metadata=_help("the version's tags"))
    onnx: bool = field(default=True, metadata=_help("also export an ONNX graph"))


@dataclass(kw_only=True)
class JobConfig:
    """A kiln training job: `kiln train job.toml [section.key=value ...]`."""

    job: JobSection = field(default_factory=JobSection)
    model: ModelSection
    data: DataSection
    split: SplitSection = field(default_factory=SplitSection)
    fit: FitSection = field(default_factory=FitSection)
    register: RegisterSection = field(default_factory=RegisterSection)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON values (what a run records and ``kiln runs rerun`` reads back)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LoadedJob:
    """A validated job: its config, the file it came from and that file's SHA-256 (None when not from a file)."""

    config: JobConfig
    path: Path | None
    sha256: str | None
    overrides: tuple[str, ...] = ()


def _check(config: JobConfig) -> JobConfig:
    """Checks across keys and of values the types cannot express; one line each, naming the key."""
    from ..export.trust import FACTORY_PATTERN
    from ..store.names import check_alias, check_name

    model, data, split, fit = config.model, config.data, config.split, config.fit
    if not FACTORY_PATTERN.fullmatch(model.module):
        raise ConfigError(f"model.module: expected 'package.module:function', got {model.module!r}")
    if data.source == "factory":
        if not FACTORY_PATTERN.fullmatch(data.factory):
            raise ConfigError(f"data.factory: source = 'factory' needs 'package.module:function', got {data.factory!r}")
    elif not data.path:
        raise ConfigError(f"data.path: missing; source = {data.source!r} reads a file or folder")
    for key, value in (
        ("data.path", data.path),
        ("data.validation_path", data.validation_path),
        ("data.test_path", data.test_path),
    ):
        if value and not os.path.exists(value):
            raise ConfigError(f"{key}: no such file or folder {value}")
    for index, directory in enumerate(config.job.python_path):
        if not os.path.isdir(directory):
            raise ConfigError(f"job.python_path[{index}]: no such folder {directory}")
    for key, fraction in (("split.validation", split.validation), ("split.test", split.test)):
        if not 0.0 <= fraction < 1.0:
            raise ConfigError(f"{key}: expected a fraction in [0, 1), got {fraction}")
    if split.validation + split.test >= 1.0:
        raise ConfigError(f"split: validation + test = {split.validation + split.test} leaves no training rows")
    for key, number in (
        ("fit.epochs", fit.epochs),
        ("fit.batch_size", fit.batch_size),
        ("fit.accumulate", fit.accumulate),
        ("fit.keep_checkpoints", fit.keep_checkpoints),
    ):
        if number < 1:
            raise ConfigError(f"{key}: expected a positive integer, got {number}")
    if isinstance(fit.checkpoint_every, int) and fit.checkpoint_every < 1:
        raise ConfigError(f"fit.checkpoint_every: expected 'epoch' or a positive integer, got {fit.checkpoint_every}")
    if fit.resume and not fit.checkpoint:
        raise ConfigError("fit.resume: needs fit.checkpoint, the folder to resume from")
    if model.lr is not None and not model.lr > 0:
        raise ConfigError(f"model.lr: expected a positive number, got {model.lr}")
    for key, name, check in (
        ("job.name", config.job.name, check_name),
        ("register.name", config.register.name, check_name),
        ("register.promote", config.register.promote, check_alias),
    ):
        if name:
            try:
                check(name)
            except KilnError as error:
                raise ConfigError(f"{key}: {error}") from None
    if config.register.promote and not config.register.name:
        raise ConfigError("register.promote: needs register.name, the model to register")
    return config


def job_from_dict(
    data: Mapping[str, Any], *, base: Path | None = None, overrides: Sequence[str] = (), name: str = "job"
) -> JobConfig:
    """A validated JobConfig from a mapping (a parsed TOML file, or a run's recorded config).

    Relative paths are taken relative to ``base`` (the config file's folder), those in ``overrides`` relative to
    the working directory; ``name`` is the default run name.
    """
    raw = resolve_paths(JobConfig, data, base) if base is not None else dict(data)
    raw = apply_overrides(JobConfig, raw, overrides, resolve=lambda value: str(Path(value).absolute()))
    config = read_section(JobConfig, raw)
    absolute_defaults(config, base if base is not None else Path.cwd())
    if not config.job.name:
        config.job.name = name
    return _check(config)


def load_job(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> LoadedJob:
    """Read, override and validate a job config file; nothing is imported or trained yet.

    Example:
        >>> job = load_job("examples/pipeline/job.toml", ["fit.epochs=2"])
        >>> job.config.fit.epochs
        2
    """
    file = Path(path).absolute()
    data, raw = read_toml(file, what="job config")
    config = job_from_dict(data, base=file.parent, overrides=overrides, name=_default_name(file))
    return LoadedJob(config, file, hashlib.sha256(raw).hexdigest(), tuple(overrides))


def _default_name(file: Path) -> str:
    """The file's stem as a run name ('job'), with characters a name may not hold replaced by '-'."""
    stem = "".join(c if c.isascii() and (c.isalnum() or c in "_-.") else "-" for c in file.stem).strip("-.")
    return stem[:64] or "job"
