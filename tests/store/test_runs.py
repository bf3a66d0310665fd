"""Tracked runs: params, buffered metrics, status, artifacts, listing; on SQLite and on PostgreSQL."""

from __future__ import annotations

import math
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from kiln.errors import ConfigError, InvalidNameError, StoreError
from kiln.store import Store
from kiln.store.liveness import machine_key, this_process
from kiln.store.runs import _Batch, mark_killed
from kiln.store.schema import runs

from .conftest import Backend

BACKENDS = ("sqlite", "postgresql")
linux_only = pytest.mark.skipif(machine_key() is None, reason="pids are judged only where /proc tells (Linux)")


def test_run_records_params_metrics_and_status(store: Store) -> None:
    with store.start_run(
        "digits-mlp",
        params={"lr": 1e-3, "layers": (64, 10), "optimizer": object()},
        tags={"team": "vision"},
        system={"device": "cpu"},
    ) as run:
        for step in range(1, 6):
            run.log({"loss": 1.0 / step}, step=step, epoch=0)
        run.log({"val_loss": math.nan}, step=5)
    info = store.run(run.id)
    assert (info.name, info.status, info.tags) == ("digits-mlp", "finished", {"team": "vision"})
    assert info.params["lr"] == 1e-3 and info.params["layers"] == [64, 10]
    assert info.params["optimizer"].startswith("<object object")  # not JSON: kept as its repr
    assert info.system["device"] == "cpu" and info.system["kiln"] and info.system["python"]
    assert info.latest["loss"] == pytest.approx(0.2) and math.isnan(info.latest["val_loss"])
    assert store.metrics(run.id, "loss")["loss"] == [(s, pytest.approx(1.0 / s)) for s in range(1, 6)]
    assert info.end_time is not None and info.duration is not None and info.duration >= 0


def test_metrics_are_written_in_batches(store: Store) -> None:
    run = store.start_run("batched", flush_rows=100, flush_seconds=1e9)
    for step in range(99):
        run.log({"loss": 0.5}, step=step)
    assert store.metrics(run.id) == {}  # still buffered: nothing written per step
    run.log({"loss": 0.5}, step=99)
    assert len(store.metrics(run.id)["loss"]) == 100  # the 100th row filled the buffer: one write
    run.log({"loss": 0.1}, step=100)
    run.finish()
    assert len(store.metrics(run.id)["loss"]) == 101


@pytest.mark.parametrize(("error", "status"), [(RuntimeError, "failed"), (KeyboardInterrupt, "killed")])
def test_context_manager_records_failure(store: Store, error: type[BaseException], status: str) -> None:
    with pytest.raises(error), store.start_run("crashing") as run:
        raise error()
    assert store.run(run.id).status == status


def test_runs_list_filters_and_prefixes(store: Store) -> None:
    ids = []
    for name, status in [("a", "finished"), ("b", "failed"), ("a", "killed")]:
        run = store.start_run(name)
        run.finish(status)
        ids.append(run.id)
    assert [r.id for r in store.runs()] == ids[::-1]
    assert [r.id for r in store.runs(name="a")] == [ids[2], ids[0]]
    assert [r.status for r in store.runs(status="failed")] == ["failed"]
    assert len(store.runs(limit=1)) == 1
    assert store.run(ids[1][:10]).id == ids[1]
    with pytest.raises(ConfigError):
        store.runs(status="exploded")
    with pytest.raises(ConfigError):
        store.start_run("x").finish("exploded")


def test_ambiguous_prefix_is_an_error(store: Store) -> None:
    from kiln.store.schema import runs

    rows = [{"id": f"abcd{i:028x}", "name": "r", "status": "finished", "params": {}, "tags": {}, "system": {},
             "start_time": 0.0} for i in range(2)]  # fmt: skip
    store.database.write(lambda connection: connection.execute(runs.insert(), rows))
    with pytest.raises(StoreError, match="matches several runs"):
        store.run("abcd")
    assert store.run("abcd" + "0" * 28).id == rows[0]["id"]
    with pytest.raises(InvalidNameError):
        store.run("abc")  # prefixes need 4 digits


def test_artifacts_are_content_addressed(store: Store, tmp_path: Path) -> None:
    run = store.start_run("with-artifacts")
    (tmp_path / "plot.png").write_bytes(b"png bytes")
    blob = run.log_artifact("plot.png", tmp_path / "plot.png")
    run.log_artifact("copy.png", tmp_path / "plot.png")
    run.finish()
    assert store.run(run.id).artifacts == {"plot.png": blob, "copy.png": blob}
    assert len(list(store.blobs.blobs())) == 1
    assert store.verify().ok and store.verify().artifacts == 2
    with pytest.raises(ConfigError, match="is not a file"):
        run.log_artifact("missing.png", tmp_path / "missing.png")


def _stored(store: Store, run_id: str) -> tuple[str, float | None, float | None]:
    """(status, end_time, heartbeat) as recorded, bypassing any judgement."""
    query = sa.select(runs.c.status, runs.c.end_time, runs.c.heartbeat).where(runs.c.id == run_id)
    return tuple(store.database.read(lambda connection: connection.execute(query).one()))  # type: ignore[return-value]


def _set(store: Store, run_id: str, **values: Any) -> None:
    update = runs.update().where(runs.c.id == run_id).values(**values)
    store.database.write(lambda connection: connection.execute(update))


# The child records a run, flushes one metric, says which run on stdout, then blocks until it is killed.
CHILD_RUN = """
import sys
from kiln.store import Store
run = Store().start_run("child")
run.log({"loss": 0.5}, step=1)
run.flush()
print(run.id, flush=True)
sys.stdin.readline()
"""


def _readline(child: subprocess.Popen, timeout: float = 120) -> str:
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], timeout)  # waits for the line, bounded, not a sleep
    assert ready, f"the child printed nothing in {timeout} s"
    return child.stdout.readline().strip()


@linux_only
def test_sigkilled_process_run_is_recorded_killed(backend: Backend, store: Store) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", CHILD_RUN],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **backend.env()},
    ) as child:
        try:
            run_id = _readline(child)
            assert store.run(run_id).status == "running"  # alive in another process: left alone
            heartbeat = _stored(store, run_id)[2]
            assert heartbeat is not None and heartbeat >= store.run(run_id).start_time
        finally:
            child.kill()
            child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert _stored(store, run_id) == ("running", None, heartbeat)  # what the dead process left

    [info] = store.runs()
    assert (info.id, info.status, info.end_time) == (run_id, "killed", heartbeat)
    assert _stored(store, run_id) == ("killed", heartbeat, heartbeat)  # recorded: ended at its last sign of life
    assert [r.id for r in store.runs(status="killed")] == [run_id] and store.runs(status="running") == []


@linux_only
def test_reused_pid_is_not_mistaken_for_the_run_process(store: Store) -> None:
    mine = store.start_run("mine")
    other = store.start_run("reused")
    me = this_process()
    # Same host and pid as a live process (this one) but another start time: the run's own process is gone.
    _set(store, other.id, process={**me, "started": me["started"] - 1})
    assert {r.name: r.status for r in store.runs()} == {"mine": "running", "reused": "killed"}
    assert _stored(store, mine.id)[0] == "running" and _stored(store, other.id)[0] == "killed"
    store.resume_run(other.id)  # resumed by this (live) process: its record follows
    assert store.run(other.id).status == "running" and _stored(store, other.id)[0] == "running"


def test_run_on_another_machine_is_stale_when_silent(store: Store) -> None:
    run = store.start_run("elsewhere")
    _set(store, run.id, process={**this_process(), "host": "gpu-node-7", "machine": "another-boot/pid:[1]"})
    assert store.run(run.id).status == "running"  # cannot check its pid; its heartbeat is fresh
    _set(store, run.id, heartbeat=time.time() - 3600)
    assert store.run(run.id).status == "stale" and store.run(run.id, stale_after=7200).status == "running"
    assert [r.id for r in store.runs(status="stale")] == [run.id] and store.runs(status="running") == []
    assert _stored(store, run.id)[0] == "running"  # only reported: the other machine may yet finish it
    run.log({"loss": 0.1}, step=1)
    run.flush()  # a write is a sign of life
    assert store.run(run.id).status == "running"
    with pytest.raises(ConfigError, match="stale_after must be a positive number"):
        store.runs(stale_after=0)


def test_heartbeat_moves_on_flush_not_on_log(store: Store) -> None:
    run = store.start_run("beating", flush_rows=100, flush_seconds=1e9)
    _set(store, run.id, heartbeat=0.0)
    run.log({"loss": 0.5}, step=1)
    assert _stored(store, run.id)[2] == 0.0  # logging is a list append: no write, no heartbeat
    run.flush()
    assert _stored(store, run.id)[2] == pytest.approx(time.time(), abs=60)
    run.finish()


def test_finished_runs_are_never_judged(store: Store) -> None:
    run = store.start_run("done")
    run.finish()
    gone = {**this_process(), "started": -1}  # whatever its process record says
    _set(store, run.id, process=gone)
    before = _stored(store, run.id)
    assert store.run(run.id).status == "finished" and _stored(store, run.id) == before


def test_a_run_resumed_meanwhile_is_not_marked_killed(store: Store) -> None:
    run = store.start_run("resumed")
    judged_dead = {**this_process(), "started": -1}  # what a lister saw before taking the write lock
    # Meanwhile the run was resumed by a live process (this one): the lister must not kill it.
    assert store.database.write(lambda connection: mark_killed(connection, {run.id: judged_dead})) == []
    assert store.run(run.id).status == "running"
    _set(store, run.id, process=judged_dead)
    assert store.database.write(lambda connection: mark_killed(connection, {run.id: judged_dead})) == [run.id]


def test_a_batch_whose_commit_went_unanswered_is_written_once(store: Store) -> None:
    """A commit can land and its answer be lost (the server restarting at that moment): the run keeps such a batch
    as unsure and, before sending it again, looks for the heartbeat that batch set. Simulated here by marking a
    committed batch, and then one never sent, as unsure (a real lost answer cannot be timed from a test)."""
    run = store.start_run("unanswered", flush_rows=10**6, flush_seconds=1e9)
    run.log_rows([("loss", step, step / 10, None) for step in range(5)])
    run.flush()  # committed; suppose its answer never came
    run._unsure = _Batch(run._stamp, [("loss", step, step / 10, None) for step in range(5)])
    run.log_rows([("loss", step, step / 10, None) for step in range(5, 8)])
    run.flush()  # the unsure batch is found committed; 5..7 are written
    run._unsure = _Batch(run._stamp + 1.0, [("loss", step, step / 10, None) for step in range(8, 10)])  # not sent
    run.finish()
    assert store.metrics(run.id)["loss"] == [(step, step / 10) for step in range(10)]
    assert store.run(run.id).status == "finished" and run.pending == 0
