"""kiln.tune in one process: trials are runs, pruning ends runs "pruned", bad input fails before training."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from safetensors.torch import load

import kiln
from kiln.errors import ConfigError
from kiln.store import Store
from kiln.tune.trial import WEIGHTS

from ._tasks import accuracy_objective, objective


def test_every_trial_is_a_run_and_a_pruned_trial_ends_pruned(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    # lr 1e-6 never gets below 0.6 val_loss: the threshold pruner stops those trials after epoch 1, deterministically
    pruner = optuna.pruners.ThresholdPruner(upper=0.6, n_warmup_steps=1)
    space = {"lr": [1e-6, 0.05], "width": (8, 32)}
    study = kiln.tune(objective, space=space, trials=6, metric="val_loss", direction="minimize", pruner=pruner,
                      sampler="random", seed=0, study="tiny", store=store)  # fmt: skip

    trials = study.trials()
    assert len(trials) == 6
    assert {t.state for t in trials if t.params["lr"] == 1e-6} == {"PRUNED"}
    assert {t.state for t in trials if t.params["lr"] == 0.05} == {"COMPLETE"}
    assert {"PRUNED", "COMPLETE"} <= {t.state for t in trials}
    runs = {run.tags["trial"]: run for run in store.runs(name="tiny")}
    assert sorted(runs) == [str(n) for n in range(6)]
    for trial in trials:
        run = runs[str(trial.number)]
        assert run.id == trial.run_id and run.tags == {"study": "tiny", "trial": str(trial.number)}
        assert run.status == ("pruned" if trial.state == "PRUNED" else "finished")
        assert {k: run.params[k] for k in trial.params} == trial.params
        assert trial.epochs == (2 if trial.state == "PRUNED" else 3)  # the pruner looks from the second epoch
    best = study.best_trial
    assert best.value == min(t.value for t in trials if t.state == "COMPLETE")
    assert study.best_params == best.params and study.best_value == best.value
    assert runs[str(best.number)].latest["val_loss"] == pytest.approx(best.value)
    assert WEIGHTS in store.run(best.run_id).artifacts  # kept so the best trial can be registered later
    assert store.runs(status="pruned")  # the store knows the status


def test_the_best_trial_registers_with_lineage_to_its_run_and_the_study(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    study = kiln.tune(accuracy_objective, space={"lr": ("log", 1e-3, 1e-1)}, trials=3, sampler="random", seed=1,
                      study="reg", store=store, pruner="none")  # fmt: skip
    version = study.register("tiny-model", onnx=False)
    assert version.run_id == study.best_run_id and version.tags == {
        "study": "reg",
        "trial": str(study.best_trial.number),
    }
    assert version.metrics["val_accuracy"] == pytest.approx(study.best_value)
    run = store.run(study.best_run_id)
    assert version.data_fingerprint == run.params["data_fingerprint"]
    kept = load(bytes(store.blobs.read(run.artifacts[WEIGHTS], label="weights")))
    published = load(bytes(store.read(version, "weights.safetensors")))
    assert kept.keys() == published.keys() and all(torch.equal(kept[k], published[k]) for k in kept)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"space": {}}, "the search space is empty"),
        ({"space": {"lr": ("normal", 0.0, 1.0)}}, "unknown distribution 'normal'"),
        ({"direction": "up"}, "direction must be 'maximize' or 'minimize'; got 'up'"),
        (
            {"metric": "val_accuracy"},
            "metric 'val_accuracy' is never reported: each epoch of this objective's fit logs loss, lr, val_loss",
        ),
        ({"trials": 0}, "trials must be a positive int"),
        ({"pruner": "mean"}, "pruner must be one of median"),
    ],
)
def test_bad_input_fails_before_the_first_trial_trains(options: dict[str, Any], message: str, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    arguments = {"space": {"lr": ("log", 1e-3, 1e-1)}, "metric": "val_loss", "direction": "minimize", "trials": 3,
                 **options}  # fmt: skip
    with pytest.raises(ConfigError, match=message) as caught:
        kiln.tune(objective, study="bad", store=store, **arguments)
    assert "\n" not in str(caught.value)
    assert store.runs() == []  # nothing trained


def test_an_existing_study_continues_only_when_resumed(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    options: dict[str, Any] = {"space": {"lr": ("log", 1e-3, 1e-1)}, "metric": "val_loss", "direction": "minimize",
                               "study": "again", "store": store, "pruner": "none"}  # fmt: skip
    kiln.tune(objective, trials=2, **options)
    with pytest.raises(ConfigError, match="study 'again' already exists in this store \\(2 trials\\); pass resume"):
        kiln.tune(objective, trials=3, **options)
    with pytest.raises(ConfigError, match="optimises 'val_loss' \\(minimize\\)"):
        kiln.tune(objective, trials=3, resume=True, **{**options, "metric": "loss"})
    study = kiln.tune(objective, trials=3, resume=True, **options)
    assert [t.number for t in study.trials()] == [0, 1, 2]  # one more, to three in all
    assert len(store.runs(name="again")) == 3


def test_kiln_tune_is_callable_after_its_modules_are_imported() -> None:
    importlib.import_module("kiln.tune.commands")  # binds kiln.tune to the package, which is callable
    assert callable(kiln.tune) and kiln.tune.tune is importlib.import_module("kiln.tune.study").tune


def test_every_trials_run_records_the_git_state_of_the_study_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("needs git")
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    (repo / "train.py").write_text("lr = 0.05\n")
    for args in (["init", "-q"], ["add", "train.py"], ["commit", "-qm", "code"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(repo)

    def editing(params: dict[str, Any]) -> Any:
        (repo / "train.py").write_text(f"lr = {params['lr']}  # tried\n")  # the tree turns dirty during the study
        return objective(params)

    store = Store(tmp_path / "store")
    kiln.tune(editing, space={"lr": [0.05, 0.1]}, trials=2, metric="val_loss", direction="minimize", pruner="none",
              sampler="random", seed=0, study="coded", store=store)  # fmt: skip
    recorded = [run.system["git"] for run in store.runs(name="coded")]
    assert recorded == [{"commit": head, "dirty": False, "checked": "study start"}] * 2  # checked once, at the start
    with store.start_run("after") as run:  # a run outside a study checks the tree it starts in
        pass
    assert store.run(run.id).system["git"] == {"commit": head, "dirty": True}
