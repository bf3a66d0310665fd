"""Job configs: typed sections, dotted overrides, and one-line errors naming the key, before any training."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from kiln.cli import main
from kiln.errors import ConfigError, TrustError
from kiln.jobs.config import JobConfig, load_job
from kiln.jobs.typed import apply_overrides, parse_value
from kiln.store import Store

from .conftest import HERE, WriteJob


def test_defaults_fill_in_and_overrides_parse_against_the_types(write_job: WriteJob) -> None:
    path = write_job()
    job = load_job(
        path,
        [
            "fit.epochs=20",
            "model.lr=3e-4",
            "fit.lr_schedule=cosine",
            "model.config.hidden=8",
            "fit.clip_grad_norm=none",
            'model.metrics=["accuracy", "f1"]',
            "fit.shuffle=false",
        ],
    )
    config = job.config
    assert (config.fit.epochs, config.model.lr, config.fit.lr_schedule) == (20, 3e-4, "cosine")
    assert config.model.config == {"hidden": 8} and config.model.metrics == ["accuracy", "f1"]
    assert config.fit.clip_grad_norm is None and config.fit.shuffle is False
    assert config.fit.precision == "fp32" and config.fit.checkpoint_every == "epoch"  # defaults filled in
    assert config.job.python_path == [str(HERE)] and Path(config.data.path).is_absolute()
    assert job.sha256 is not None and len(job.sha256) == 64 and job.overrides[0] == "fit.epochs=20"
    assert load_job(path).config.fit.epochs == 2  # the file itself is unchanged


def test_relative_paths_are_the_files_and_the_command_lines(
    tmp_path: Path, write_job: WriteJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    path = write_job(fit={"checkpoint": "ckpt"})
    assert load_job(path).config.fit.checkpoint == str(tmp_path / "ckpt")
    monkeypatch.chdir(tmp_path / "sub")
    assert load_job(path, ["fit.checkpoint=here"]).config.fit.checkpoint == str(tmp_path / "sub" / "here")


@pytest.mark.parametrize(
    ("changes", "overrides", "message"),
    [
        ({"fit": {"epochs": "ten"}}, [], 'fit.epochs: expected an integer, got "ten"'),
        ({}, ["fit.epochs=ten"], 'fit.epochs: expected an integer, got "ten"'),
        ({"fit": {"epoch": 3}}, [], "fit.epoch: unknown key; did you mean fit.epochs?"),
        ({}, ["fit.epoch=3"], "fit.epoch: unknown key; did you mean fit.epochs?"),
        ({}, ["fitt.epochs=3"], "fitt: unknown key; did you mean fit?"),
        ({"model": {"lr": "fast"}}, [], 'model.lr: expected a number, got "fast"'),
        ({}, ["fit.precision=fp64"], 'fit.precision: expected one of "fp32", "bf16", "fp16", got "fp64"'),
        (
            {},
            ["model.loss=cross_entropyy"],
            'model.loss: unknown value "cross_entropyy"; did you mean "cross_entropy"?',
        ),
        ({}, ["fit.shuffle=maybe"], 'fit.shuffle: expected true or false, got "maybe"'),
        ({}, ["fit.epochs"], 'override "fit.epochs": write it as section.key=value'),
        ({}, ["fit.epochs.x=1"], "fit.epochs: is an integer, not a table; set it as fit.epochs=VALUE"),
        ({}, ["data.path=missing.npz"], "data.path: no such file or folder"),
        ({}, ["split.validation=0.9"], "split: validation + test = 1.1"),
        ({}, ["register.name=bad/name"], "register.name: invalid model name 'bad/name'"),
        ({}, ["fit.resume=true"], "fit.resume: needs fit.checkpoint"),
        ({"model": {"module": "no_colon"}}, [], "model.module: expected 'package.module:function'"),
    ],
)
def test_bad_configs_fail_with_the_key_path(
    write_job: WriteJob, changes: dict, overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_job(write_job(**changes), overrides)
    assert str(error.value).startswith(message), str(error.value)
    assert "\n" not in str(error.value)


def test_a_missing_section_or_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text('[model]\nmodule = "a.b:c"\n')
    with pytest.raises(ConfigError, match=r"^data: missing; it is required"):
        load_job(path)
    path.write_text('[model]\nlr = 0.1\n[data]\nsource = "csv"\npath = "x.csv"\n')
    with pytest.raises(ConfigError, match=r"^model.module: missing; it is required \(e.g. \"mypkg.nets:Net\"\)"):
        load_job(path)
    path.write_text("[model\n")
    with pytest.raises(ConfigError, match=r"job config .*job.toml: invalid TOML \(.*line 1"):
        load_job(path)
    with pytest.raises(ConfigError, match=r"job config .*nothere.toml: no such file"):
        load_job(tmp_path / "nothere.toml")


def test_a_cli_error_is_one_line_and_nothing_trains(
    write_job: WriteJob, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    cases = [
        (["fit.epochs=ten"], 'kiln: error: fit.epochs: expected an integer, got "ten"'),
        (
            ["model.module=kiln_test_nets:nothing"],
            "kiln: error: model.module: module 'kiln_test_nets' has no attribute 'nothing'",
        ),
        (["model.module=no_such_module:net"], "kiln: error: model.module: cannot import 'no_such_module'"),
        (["model.config.width=3"], "kiln: error: model.config: kiln_test_nets:mlp(**model.config) failed"),
        (["data.options.z=x"], "kiln: error: data.options.z: unknown option of arrays"),
        (["data.options.x=images"], "kiln: error: data.options.x: digits.npz has no array 'images'"),
    ]
    for overrides, expected in cases:
        assert main(["train", str(write_job()), *overrides, "--store", str(store)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(expected) and err.count("\n") == 1, err
    assert Store(store).runs() == []  # every error came before a run was recorded


def test_a_recorded_configs_factory_needs_trust(write_job: WriteJob, store: Store) -> None:
    """A config read back from a store is data: its factory is imported only when trusted."""
    from kiln.jobs.train import rerun, run_job

    result = run_job(load_job(write_job()), store=store)
    with pytest.raises(
        TrustError,
        match=r"^model.module: the factory 'kiln_test_nets:mlp' is not trusted here.*"
        r"--trust kiln_test_nets",
    ):
        rerun(result.run_id, store=store)
    assert len(store.runs()) == 1


def test_overrides_reach_free_form_tables_and_refuse_bad_toml() -> None:
    raw = {"model": {"module": "a:b"}, "data": {"source": "csv", "path": "x"}}
    out = apply_overrides(JobConfig, raw, ["model.config.depth=3", "model.config.act=gelu", "data.options.label=-1"])
    assert out["model"]["config"] == {"depth": 3, "act": "gelu"} and out["data"]["options"] == {"label": -1}
    every = int | Literal["epoch"]
    assert parse_value("epoch", every, "k") == "epoch" and parse_value("5", every, "k") == 5
    with pytest.raises(ConfigError, match=r'^k: expected an integer or one of "epoch", got "epochs"'):
        parse_value("epochs", every, "k")
    with pytest.raises(ConfigError, match=r"^model.metrics: expected a list of strings written as TOML"):
        apply_overrides(JobConfig, raw, ["model.metrics=[accuracy"])
