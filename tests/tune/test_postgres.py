"""`kiln tune` on a PostgreSQL store: Optuna's tables beside kiln's in the same database, a SIGKILL and a --resume.

The server is the store tests' throwaway PostgreSQL 15 cluster (tests/store/postgres.py); each test gets a fresh
database holding an empty store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa

from kiln.store import Store
from kiln.store.liveness import process_liveness
from kiln.tune.storage import open_storage
from store import conftest as store_tests  # tests/store: the backend fixtures and the PostgreSQL cluster

BACKENDS = ("postgresql",)  # read by the store tests' pytest_generate_tests
backend = store_tests.backend
postgres_cluster = store_tests.postgres_cluster
pytest_generate_tests = store_tests.pytest_generate_tests

ROOT = Path(__file__).resolve().parents[2]
JOB, SPACE = ROOT / "examples" / "tune" / "job.toml", ROOT / "examples" / "tune" / "space.toml"
TRIALS = 3


def _trials(storage: object) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="pg", storage=storage).get_trials(deepcopy=False)
    except KeyError:  # the tuner has not created the study yet
        return []


def test_kiln_tune_on_postgresql_survives_sigkill_and_resumes(backend: store_tests.Backend, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "kiln.cli", "tune", str(JOB), "--space", str(SPACE), "--trials", str(TRIALS),
               "--study", "pg", "--sampler", "random", "--seed", "0", "--pruner", "none", "--set", "fit.epochs=2",
               *backend.args()]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    store = backend.open()
    storage = open_storage(store)
    log = tmp_path / "tuner.log"
    with log.open("w") as stderr:
        tuner = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 300
        running: list[optuna.trial.FrozenTrial] = []
        while time.monotonic() < deadline:  # until a trial is done and the next one is training in its run
            trials = _trials(storage)
            done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
            running = [t for t in trials if t.state.name == "RUNNING" and "kiln_run_id" in t.user_attrs]
            if done and running:
                break
            if tuner.poll() is not None:
                pytest.fail(f"the tuner ended before it could be killed: {log.read_text()[-3000:]}")
            time.sleep(0.05)  # a polling interval, bounded by the deadline
        else:
            pytest.fail("the study never had a trial done and another running")
    finally:
        tuner.send_signal(signal.SIGKILL)  # also when the test failed: no tuner outlives it
        tuner.wait(timeout=30)
    assert process_liveness(running[0].user_attrs["kiln_process"]) == "dead"

    before = {t.number: t for t in _trials(storage)}
    killed = [n for n, t in before.items() if t.state == optuna.trial.TrialState.RUNNING]
    finished = {n: t for n, t in before.items() if t.state == optuna.trial.TrialState.COMPLETE}
    assert killed == [running[0].number] and finished

    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "study pg: best trial" in resumed.stdout
    assert "warning" not in resumed.stderr.lower(), resumed.stderr[-3000:]  # the heartbeat is Optuna-"experimental"

    after = {t.number: t for t in _trials(storage)}
    states = {n: t.state for n, t in after.items()}
    assert sum(s == optuna.trial.TrialState.COMPLETE for s in states.values()) == TRIALS
    assert [n for n, s in states.items() if s == optuna.trial.TrialState.FAIL] == killed
    for number, trial in finished.items():  # nothing finished was touched or run again
        assert states[number] == optuna.trial.TrialState.COMPLETE and after[number].value == trial.value
    retry = [t for t in after.values() if t.system_attrs.get("failed_trial") == killed[0]]
    assert len(retry) == 1 and retry[0].params == after[killed[0]].params  # re-run once, same parameters
    assert len(after) == TRIALS + 1  # the killed trial and its retry; no other trial lost or repeated

    # Optuna's own tables, in the store's database beside kiln's: every trial and its state.
    engine = sa.create_engine(backend.reference, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.exec_driver_sql(
                "SELECT t.number, t.state FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "WHERE s.study_name = 'pg' ORDER BY t.number"
            ).all()
    finally:
        engine.dispose()
    assert [(number, str(state)) for number, state in rows] == [(n, states[n].name) for n in sorted(states)]

    # kiln's runs: one per trial that started training; the killed one "killed", every completed one "finished".
    runs = {run.id: run for run in Store(backend.reference, blobs=backend.blobs).runs(name="pg", limit=100)}
    assert set(runs) == {t.user_attrs["kiln_run_id"] for t in after.values() if "kiln_run_id" in t.user_attrs}
    assert runs[after[killed[0]].user_attrs["kiln_run_id"]].status == "killed"
    for trial in after.values():
        if trial.state == optuna.trial.TrialState.COMPLETE:
            run = runs[trial.user_attrs["kiln_run_id"]]
            assert run.status == "finished" and run.tags == {"study": "pg", "trial": str(trial.number)}
            assert run.latest["val_accuracy"] == pytest.approx(trial.value)
    storage.engine.dispose()
