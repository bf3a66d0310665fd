"""Worker processes on one SQLite store, and a study that survives SIGKILL and resumes without losing a trial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

import kiln
from kiln.store import Store
from kiln.store.liveness import process_liveness
from kiln.tune.storage import open_storage

from ._tasks import objective

SPACE = {"lr": ("log", 1e-3, 1e-1), "width": (4, 16)}


def test_eight_workers_share_one_sqlite_store(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    store = Store(tmp_path / "store")
    study = kiln.tune(objective, space={**SPACE, "epochs": [1]}, trials=32, workers=8, metric="val_loss",
                      direction="minimize", pruner="none", study="many", store=store, seed=0)  # fmt: skip

    out, err = capfd.readouterr()
    assert "database is locked" not in (out + err).lower()
    trials = study.trials()
    assert len(trials) == 32 and {t.state for t in trials} == {"COMPLETE"}
    runs = store.runs(name="many", limit=100)
    assert sorted(int(run.tags["trial"]) for run in runs) == list(range(32))
    assert {run.status for run in runs} == {"finished"}
    assert {run.id for run in runs} == {t.run_id for t in trials}
    assert all("val_loss" in run.latest for run in runs)
    assert len({run.process["pid"] for run in runs}) == 8  # every worker ran its share


SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import kiln
from tune._tasks import objective
kiln.tune(objective, space={space!r}, trials=6, workers=2, metric="val_loss", direction="minimize", pruner="none",
          study="crash", store={store!r}, resume=True, seed=0)
print("done")
"""


def _states(storage: object) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="crash", storage=storage).get_trials(deepcopy=False)
    except KeyError:  # the tuner has not created the study yet
        return []


def test_a_killed_study_resumes_without_losing_or_repeating_a_trial(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    script = tmp_path / "tuner.py"
    tests = str(Path(__file__).resolve().parents[1])
    script.write_text(SCRIPT.format(tests=tests, space={**SPACE, "epochs": [20]}, store=str(store.path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tuner = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    storage = open_storage(store)
    deadline = time.monotonic() + 240
    running: list[optuna.trial.FrozenTrial] = []
    while time.monotonic() < deadline:  # poll until two trials are done and others run in both workers
        trials = _states(storage)
        done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING and "kiln_run_id" in t.user_attrs]
        if len(done) >= 2 and running:
            break
        assert tuner.poll() is None, "the tuner ended before it could be killed"
        time.sleep(0.05)  # a polling interval, bounded by the deadline
    else:
        pytest.fail("the study never had two trials done and one running")
    tuner.send_signal(signal.SIGKILL)
    tuner.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(process_liveness(t.user_attrs.get("kiln_process")) == "alive" for t in running):
        assert time.monotonic() < deadline, "the workers outlived the tuner"
        time.sleep(0.05)  # the workers die with the tuner (PR_SET_PDEATHSIG); wait for the kernel to end them

    before = {t.number: t for t in _states(storage)}
    killed = [n for n, t in before.items() if t.state == optuna.trial.TrialState.RUNNING]
    finished = {n: t for n, t in before.items() if t.state == optuna.trial.TrialState.COMPLETE}
    assert killed and finished

    resumed = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    after = {t.number: t for t in _states(storage)}
    states = {n: t.state for n, t in after.items()}
    assert sum(s == optuna.trial.TrialState.COMPLETE for s in states.values()) == 6
    for number, trial in finished.items():  # nothing finished was touched or run again
        assert states[number] == optuna.trial.TrialState.COMPLETE and after[number].value == trial.value
    assert sorted(n for n, s in states.items() if s == optuna.trial.TrialState.FAIL) == sorted(killed)
    retries = {t.system_attrs["failed_trial"]: t for t in after.values() if "failed_trial" in t.system_attrs}
    assert sorted(retries) == sorted(killed)  # each killed trial ran again, once, with its parameters
    for number, retry in retries.items():
        # The retry keeps every parameter the killed trial had drawn; a trial killed while its parameters were
        # still being suggested draws the rest afresh.
        assert retry.state == optuna.trial.TrialState.COMPLETE
        assert after[number].params.items() <= retry.params.items() and set(retry.params) == set(SPACE) | {"epochs"}
    assert len(after) == len(finished) + 2 * len(killed) + (6 - len(finished) - len(killed))
    runs = {run.id: run for run in store.runs(name="crash", limit=100)}
    for number in killed:  # a trial killed before its run started has none
        if "kiln_run_id" in after[number].user_attrs:
            # The run is marked killed, or it had finished: a kill can fall after the trial's run wrote its end and
            # before Optuna was told (the trial still runs again). Never left "running".
            assert runs[after[number].user_attrs["kiln_run_id"]].status in ("killed", "finished")
    assert {runs[t.user_attrs["kiln_run_id"]].status for t in after.values() if t.state.name == "COMPLETE"} == {
        "finished"
    }
