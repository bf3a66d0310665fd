"""Fixtures for job and pipeline tests: digits as a .npz file, a job config writer, a store."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.store import Store

HERE = Path(__file__).resolve().parent

WriteJob = Callable[..., Path]


def toml_value(value: Any) -> str:
    """A TOML literal for the plain values the tests use (JSON's strings, numbers and arrays are TOML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def toml_text(sections: dict[str, dict[str, Any]]) -> str:
    return "".join(
        f"[{name}]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in body.items()) + "\n"
        for name, body in sections.items()
    )


@pytest.fixture(scope="session")
def digits_npz(tmp_path_factory: pytest.TempPathFactory, digits: tuple[np.ndarray, np.ndarray]) -> Path:
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x=digits[0], y=digits[1])
    return path


def job_sections(data_file: Path, **changes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A tiny, fast digits job (an MLP, 2 epochs, CPU) reading ``data_file``; ``changes`` update its sections."""
    sections: dict[str, dict[str, Any]] = {
        "job": {"name": "digits-mlp", "python_path": [str(HERE)]},
        "model": {
            "module": "kiln_test_nets:mlp",
            "config": {"hidden": 16},
            "lr": 0.01,
            "metrics": ["accuracy"],
            "device": "cpu",
        },
        "data": {"source": "arrays", "path": str(data_file)},
        "split": {"validation": 0.2, "test": 0.2, "seed": 0},
        "fit": {"epochs": 2, "batch_size": 64, "seed": 0, "verbose": 0},
    }
    for name, values in changes.items():
        sections.setdefault(name, {}).update(values)
    return sections


@pytest.fixture
def write_job(tmp_path: Path, digits_npz: Path) -> WriteJob:
    """Write a job config (see job_sections) into tmp_path and return its path."""

    def write(name: str = "job.toml", **changes: dict[str, Any]) -> Path:
        path = tmp_path / name
        path.write_text(toml_text(job_sections(digits_npz, **changes)))
        return path

    return write


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "store")
    yield opened
    opened.close()


def pipeline_text(name: str, steps: list[dict[str, Any]], **section: Any) -> str:
    """A pipeline file: its [pipeline] section and one [[steps]] table per step."""
    head = toml_text({"pipeline": {"name": name, **section}})
    return head + "".join(
        "[[steps]]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in step.items()) + "\n"
        for step in steps
    )


RELEASE = [
    {"name": "train", "kind": "train", "job": "job.toml"},
    {"name": "evaluate", "kind": "evaluate", "run": "${train.run_id}", "split": "test"},
    {"name": "gate", "kind": "gate", "model": "digits", "check": "test_accuracy >= production + 0.002"},
    {"name": "register", "kind": "register", "run": "${train.run_id}", "model": "digits", "onnx": False},
    {"name": "promote", "kind": "promote", "model": "digits", "version": "${register.version}", "alias": "production"},
    {
        "name": "export",
        "kind": "export",
        "model": "digits@${register.version}",
        "directory": "exported/v${register.version}",
    },
]
