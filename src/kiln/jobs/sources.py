"""Datasets from a job's ``[data]`` and ``[split]`` sections: a kiln.data source by name, or a user factory.

Sources and what ``data.options`` passes to them:

- ``arrays``: a ``.npz`` file (``x`` and ``y`` name its arrays, default "x" and "y") or a ``.npy`` of inputs with
  ``targets`` naming a second ``.npy`` beside it. Read with ``allow_pickle=False``: an object array is refused.
- ``csv``: :func:`kiln.data.read_csv` (``label``, ``features``, ``delimiter``, ``header``, ``classes``).
- ``jsonl``: :func:`kiln.data.read_jsonl` (``text_field``, ``label_field``, ``tokenizer``, ``max_length``, ...).
- ``image_folder`` / ``audio_folder``: :class:`kiln.data.ImageFolder` / :class:`kiln.data.AudioFolder`, decoded into
  memory when ``data.to_memory`` (the default).
- ``factory``: ``data.factory`` called with ``data.options``; it returns a dataset, a ``(train, validation[, test])``
  tuple, or a dict with those keys.

Validation and test files (``data.validation_path``, ``data.test_path``) are read like the training file, with the
training set's classes (and vocabulary) so every split maps labels to the same ids.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import ArrayDataset, AudioFolder, ImageFolder, read_csv, read_jsonl
from ..errors import ConfigError, KilnError
from .config import DataSection, SplitSection
from .typed import suggest

__all__ = ["Datasets", "build_datasets"]


@dataclass
class Datasets:
    """The training data and the optional validation and test sets of a job, and the files they were read from."""

    train: Any
    validation: Any = None
    test: Any = None
    files: list[Path] = field(default_factory=list)


def _check_options(function: Callable[..., Any], options: Mapping[str, Any], *, skip: int) -> None:
    """Refuse an option the source does not take, suggesting the closest one it does."""
    parameters = list(inspect.signature(function).parameters.values())[skip:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    names = [p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for key in options:
        if key not in names:
            near = suggest(key, names)
            hint = f"did you mean data.options.{near}?" if near else f"valid: {', '.join(names) or 'none'}"
            raise ConfigError(
                f"data.options.{key}: unknown option of {getattr(function, '__name__', function)}; {hint}"
            )


def _npz(path: Path, options: Mapping[str, Any]) -> ArrayDataset:
    unknown = set(options) - {"x", "y", "targets"}
    if unknown:
        key = sorted(unknown)[0]
        near = suggest(key, ["x", "y", "targets"])
        raise ConfigError(
            f"data.options.{key}: unknown option of arrays"
            + (f"; did you mean {near}?" if near else "; valid: x, y (.npz), targets (.npy)")
        )
    try:
        if path.suffix == ".npy":
            x = np.load(path, allow_pickle=False)
            targets = options.get("targets")
            y = np.load(path.parent / str(targets), allow_pickle=False) if targets else None
            return ArrayDataset(x, y)
        with np.load(path, allow_pickle=False) as arrays:
            x_key, y_key = str(options.get("x", "x")), options.get("y", "y")
            for key, name in (("x", x_key), ("y", y_key)):
                if name and name not in arrays.files:
                    raise ConfigError(
                        f"data.options.{key}: {path.name} has no array {name!r}; it has {', '.join(arrays.files)}"
                    )
            return ArrayDataset(arrays[x_key], arrays[y_key] if y_key else None)
    except ConfigError:
        raise
    except (OSError, ValueError) as error:  # not an array file, or an object array (allow_pickle=False)
        raise ConfigError(f"data.path: cannot read arrays from {path} ({error})") from None


def _read(data: DataSection, path: Path, train: Any = None) -> Any:
    """One dataset from ``path`` with the source of ``data``; ``train`` lends its classes and vocabulary."""
    options = dict(data.options)
    if train is not None and getattr(train, "classes", None) is not None and data.source != "arrays":
        options.setdefault("classes", train.classes)
    if train is not None and data.source == "jsonl" and getattr(train, "vocabulary", None) is not None:
        options.setdefault("vocabulary", train.vocabulary)
    if data.source == "arrays":
        if path.suffix not in (".npz", ".npy"):
            raise ConfigError(f"data.path: source 'arrays' reads .npz or .npy files, got {path.name}")
        return _npz(path, options)
    readers: dict[str, Callable[..., Any]] = {
        "csv": read_csv,
        "jsonl": read_jsonl,
        "image_folder": ImageFolder,
        "audio_folder": AudioFolder,
    }
    reader = readers[data.source]
    _check_options(reader, options, skip=1)  # the first parameter is the path
    dataset = reader(path, **options)
    if data.to_memory and hasattr(dataset, "to_memory"):
        dataset = dataset.to_memory()
    return dataset


def _from_factory(made: Any) -> tuple[Any, Any, Any]:
    if isinstance(made, Mapping):
        unknown = set(made) - {"train", "validation", "test"}
        if unknown or "train" not in made:
            raise ConfigError(
                f"data.factory: returned a dict with keys {sorted(made)}; expected 'train' and "
                "optionally 'validation' and 'test'"
            )
        return made["train"], made.get("validation"), made.get("test")
    if isinstance(made, tuple) and len(made) in (2, 3) and not all(isinstance(m, np.ndarray) for m in made):
        return (made[0], made[1], made[2] if len(made) == 3 else None)
    return made, None, None


def _split(datasets: Datasets, split: SplitSection) -> None:
    if not (split.validation or split.test):
        return
    if split.validation and datasets.validation is not None:
        raise ConfigError(
            "split.validation: the data already has a validation set (data.validation_path or the "
            "factory's); set split.validation = 0"
        )
    if split.test and datasets.test is not None:
        raise ConfigError(
            "split.test: the data already has a test set (data.test_path or the factory's); set split.test = 0"
        )
    rest = datasets.train
    if not isinstance(rest, ArrayDataset):
        raise ConfigError(
            f"split: splitting needs data in memory ({type(rest).__name__} is not): set "
            "data.to_memory = true, or give data.validation_path / data.test_path"
        )
    try:
        if split.test:
            rest, datasets.test = rest.split(1.0 - split.test, seed=split.seed)
        if split.validation:
            share = split.validation / (1.0 - split.test)
            rest, datasets.validation = rest.split(1.0 - share, seed=split.seed)
    except KilnError as error:
        raise ConfigError(f"split: {error}") from None
    datasets.train = rest


def build_datasets(data: DataSection, split: SplitSection, *, factory: Callable[..., Any] | None = None) -> Datasets:
    """Read (or make) the datasets and split them; errors are one line naming the key.

    ``factory`` is the imported ``data.factory`` for ``source = "factory"`` (imported by the caller, which decides
    whether it is trusted).

    Example:
        >>> sets = build_datasets(job.data, job.split)
        >>> len(sets.train), len(sets.validation)
    """
    if data.source == "factory":
        assert factory is not None, "build_datasets: source 'factory' needs the imported factory"
        try:
            made = factory(**data.options)
        except TypeError as error:
            raise ConfigError(f"data.options: {data.factory}(**data.options) failed: {error}") from None
        datasets = Datasets(*_from_factory(made))
    else:
        files = [Path(p) for p in (data.path, data.validation_path, data.test_path) if p]
        try:
            train = _read(data, Path(data.path))
            validation = _read(data, Path(data.validation_path), train) if data.validation_path else None
            test = _read(data, Path(data.test_path), train) if data.test_path else None
        except ConfigError:
            raise
        except KilnError as error:
            raise ConfigError(f"data: {error}") from None
        except TypeError as error:
            raise ConfigError(f"data.options: {error}") from None
        datasets = Datasets(train, validation, test, files)
    _split(datasets, split)
    if datasets.train is None or (hasattr(datasets.train, "__len__") and len(datasets.train) == 0):
        raise ConfigError("data: the training set is empty")
    return datasets
