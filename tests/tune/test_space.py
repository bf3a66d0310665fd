"""Search spaces: the Python, TOML and Optuna forms give Optuna distributions; bad entries fail in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from kiln.errors import ConfigError
from kiln.tune import parse_space, read_space


def test_the_plain_python_form() -> None:
    space = parse_space({
        "lr": ("log", 1e-5, 1e-1), "width": (32, 512), "dropout": (0.0, 0.5), "optimizer": ["adam", "sgd"],
        "batch": ("int", 16, 128, 16), "ratio": ("float", 0.1, 0.9, 0.1), "layers": ("log", 1, 8),
        "momentum": ("uniform", 0.8, 0.99), "given": FloatDistribution(1.0, 2.0),
    })  # fmt: skip
    assert space == {
        "lr": FloatDistribution(1e-5, 1e-1, log=True), "width": IntDistribution(32, 512),
        "dropout": FloatDistribution(0.0, 0.5), "optimizer": CategoricalDistribution(["adam", "sgd"]),
        "batch": IntDistribution(16, 128, step=16), "ratio": FloatDistribution(0.1, 0.9, step=0.1),
        "layers": IntDistribution(1, 8, log=True), "momentum": FloatDistribution(0.8, 0.99),
        "given": FloatDistribution(1.0, 2.0),
    }  # fmt: skip


def test_the_toml_form_with_nested_tables(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text(
        'lr = {log = [1e-4, 1e-1]}\n"fit.batch_size" = {int = [32, 128], step = 32}\n'
        'optimizer = {choice = ["adamw", "sgd"]}\n[model.config]\nwidth = {int = [16, 64]}\n'
        "dropout = {float = [0.0, 0.3]}\n"
    )
    assert read_space(path) == {
        "lr": FloatDistribution(1e-4, 1e-1, log=True), "fit.batch_size": IntDistribution(32, 128, step=32),
        "optimizer": CategoricalDistribution(["adamw", "sgd"]), "model.config.width": IntDistribution(16, 64),
        "model.config.dropout": FloatDistribution(0.0, 0.3),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({}, "the search space is empty"),
        ({"lr": ("loguniform", 1e-5, 1e-1)}, "unknown distribution 'loguniform'"),
        ({"lr": {"normal": [0, 1]}}, "unknown distribution 'normal'"),
        ({"lr": ("log", 0.0, 1.0)}, "a log range needs low > 0"),
        ({"width": (512, 32)}, "low 512 must be below high 32"),
        ({"width": ("int", 1.5, 8)}, "an int range takes int bounds"),
        ({"optimizer": []}, "non-empty list of choices"),
        ({"lr": 0.1}, "a float is not a distribution"),
        ({"lr": ("log", 1e-5)}, "a tuple is"),
    ],
)
def test_bad_spaces_fail_in_one_line(space: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_space(space)
    assert "\n" not in str(caught.value)


def test_a_space_file_that_is_not_toml_is_named(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text("lr = [\n")
    with pytest.raises(ConfigError, match=r"space\.toml is not valid TOML"):
        read_space(path)
