"""`kiln tune JOB --space SPACE` on the example job config, `kiln tune show [STUDY] --plot`, and their refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

import kiln
from kiln.cli import main
from kiln.store import Store

ROOT = Path(__file__).resolve().parents[2]
JOB, SPACE = ROOT / "examples" / "tune" / "job.toml", ROOT / "examples" / "tune" / "space.toml"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example job tuned for 3 short trials, its best registered (without ONNX, to keep it quick)."""
    store = tmp_path_factory.mktemp("tune") / "store"
    code = main(["tune", str(JOB), "--space", str(SPACE), "--trials", "3", "--seed", "0", "--study", "digits",
                 "--set", "fit.epochs=2", "--set", "register.onnx=false", "--register", "digits-tuned",
                 "--pruner", "none", "--store", str(store)])  # fmt: skip
    assert code == 0
    return store


def test_kiln_tune_trains_the_job_config_with_each_trials_overrides(
    tuned: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = kiln.tune.load_study("digits", store=tuned)
    trials = study.trials()
    assert [t.state for t in trials] == ["COMPLETE"] * 3
    assert set(trials[0].params) == {"model.lr", "model.optimizer", "model.config.channels", "fit.batch_size"}
    store = Store(tuned)
    for trial in trials:
        run = store.run(trial.run_id)
        # the trial's values are what trained: the fit's batch size and the optimizer class follow them
        assert run.params["batch_size"] == trial.params["fit.batch_size"] and run.params["epochs"] == 2
        assert run.params["optimizer"].lower() == trial.params["model.optimizer"]
    version = store.version("digits-tuned")
    assert version.run_id == study.best_run_id and version.tags == {
        "study": "digits",
        "trial": str(study.best_trial.number),
    }
    assert "model.onnx" not in version.files


def test_kiln_tune_show_prints_best_trials_importances_and_plots(
    tuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["tune", "show", "digits", "--store", str(tuned), "--plot", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    study = kiln.tune.load_study("digits", store=tuned)
    assert "best trial" in out and f"{study.best_trial.number}: val_accuracy" in out
    assert "trials of digits" in out and out.count("complete") >= 3
    assert "parameter importances" in out and "model.lr" in out
    for name in ("digits-history.png", "digits-importances.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == PNG and f"wrote {tmp_path / 'plots' / name}" in out
    assert main(["tune", "show", "--store", str(tuned)]) == 0
    listing = capsys.readouterr().out
    assert "digits" in listing and "val_accuracy" in listing and "3 complete" in listing


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tune", "show", "nosuch"], "kiln: error: no study 'nosuch' in the store"),
        (["tune", str(JOB)], "kiln: error: kiln tune JOB needs --space SPACE.toml"),
        (["tune", str(JOB), "--space", str(JOB)], "kiln: error: search space parameter 'job.name'"),
        (["tune", str(JOB), "--space", str(SPACE), "--direction", "sideways"], "kiln: error: direction must be"),
    ],
)
def test_kiln_tune_refuses_in_one_line(
    argv: list[str], message: str, tuned: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main([*argv, "--store", str(tuned)]) != 0
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
