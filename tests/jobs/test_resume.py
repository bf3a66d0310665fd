"""`kiln run --resume` after a SIGKILL in the middle of training ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.jobs.execution import read_record
from kiln.store import Store

from .conftest import RELEASE, WriteJob, pipeline_text

# 1078 training rows in batches of 64: 17 steps an epoch. The 39th training forward is in the third epoch, after the
# checkpoint of the second (step 34) was written, and before the third's (step 51).
PAUSE_AT, LAST_CHECKPOINT, EPOCHS = 39, 34, 4


def executions(store: Store, kind: str) -> list:
    return [run for run in store.runs() if run.tags.get("kiln.kind") == kind]


def test_resume_after_sigkill_mid_train_equals_an_uninterrupted_execution(
    tmp_path: Path, write_job: WriteJob, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KILN_TEST_PAUSE_AT", raising=False)
    write_job(model={"module": "kiln_test_nets:pausing"}, fit={"epochs": EPOCHS})
    notes = tmp_path / "notes.txt"
    note = {
        "name": "note",
        "kind": "shell",
        "command": [sys.executable, "-c", "import sys; open(sys.argv[1], 'a').write('ran\\n')", str(notes)],
    }
    path = tmp_path / "pipeline.toml"
    path.write_text(pipeline_text("release", [note, *RELEASE[:5]]))
    killed, straight = tmp_path / "killed", tmp_path / "straight"

    # 1. A real `kiln run` process, killed with SIGKILL while it trains (it pauses at a known step to be killed).
    marker = tmp_path / "paused"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "KILN_TEST_PAUSE_AT": str(PAUSE_AT),
        "KILN_TEST_PAUSE_FILE": str(marker),
    }
    log = (tmp_path / "run.log").open("w")
    child = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli", "run", str(path), "--store", str(killed)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert child.poll() is None, (tmp_path / "run.log").read_text()
        assert time.monotonic() < deadline, "the training did not reach its pause point in time"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL
    log.close()

    store = Store(killed)
    (execution,) = executions(store, "pipeline")
    (train,) = executions(store, "train")
    assert execution.status == "killed" and train.status == "killed"  # the dead process, found by the store
    steps = read_record(store, store.run(execution.id))["steps"]
    assert [s["status"] for s in steps] == ["finished", "running", "pending", "pending", "pending", "pending"]
    checkpoints = sorted(p.name for p in (killed / "jobs" / "pipelines" / execution.id / "train").iterdir())
    assert checkpoints[-1] == f"ckpt-{LAST_CHECKPOINT:010d}.safetensors", checkpoints
    assert notes.read_text() == "ran\n"

    # 2. --resume: the finished shell step is skipped, train continues from its checkpoint, the rest runs.
    assert main(["run", str(path), "--resume", "--store", str(killed)]) == 0
    out = capsys.readouterr().out
    assert f"resuming execution {execution.id} of release (1/6 steps finished before)" in out
    assert "step note (shell): finished before, skipped" in out
    assert notes.read_text() == "ran\n"

    # 3. The same pipeline, never interrupted, into another store.
    assert main(["run", str(path), "--store", str(straight)]) == 0
    assert notes.read_text() == "ran\nran\n"

    # 4. The end states are the same.
    other = Store(straight)
    for opened in (store, other):
        assert [r.status for r in executions(opened, "pipeline")] == ["finished"]
        assert [r.status for r in executions(opened, "train")] == ["finished"]
    assert executions(store, "pipeline")[0].id == execution.id and executions(store, "train")[0].id == train.id
    resumed_steps = read_record(store, store.run(execution.id))["steps"]
    straight_run = executions(other, "pipeline")[0]
    straight_steps = read_record(other, other.run(straight_run.id))["steps"]
    assert [s["status"] for s in resumed_steps] == ["finished"] * 6
    for mine, theirs in zip(resumed_steps[2:], straight_steps[2:], strict=True):  # evaluate, gate, register, promote
        ids = ("run_id", "incumbent")
        assert {k: v for k, v in mine["outputs"].items() if k not in ids} == {
            k: v for k, v in theirs["outputs"].items() if k not in ids
        }
    assert store.metrics(train.id) == other.metrics(executions(other, "train")[0].id)  # every epoch, bit for bit
    mine_version, their_version = store.version("digits@production"), other.version("digits@production")
    assert mine_version.version == their_version.version == 1
    assert mine_version.files["weights.safetensors"] == their_version.files["weights.safetensors"]
    assert mine_version.metrics == their_version.metrics and mine_version.run_id == train.id
    assert mine_version.tags["kiln.pipeline.run"] == execution.id


def test_resume_refuses_a_changed_pipeline_and_starts_fresh_when_nothing_stopped(
    tmp_path: Path, write_job: WriteJob, capsys: pytest.CaptureFixture[str]
) -> None:
    write_job()
    path = tmp_path / "pipeline.toml"
    path.write_text(
        pipeline_text("release", [RELEASE[0], {"kind": "gate", "check": "val_accuracy > 0.99", "metrics": "train"}])
    )
    store = tmp_path / "store"
    assert main(["run", str(path), "--store", str(store)]) == 1  # the threshold is out of reach
    assert "not promoted: " in capsys.readouterr().err
    write_job(fit={"epochs": 3})  # the job it trains changed
    assert main(["run", str(path), "--resume", "--store", str(store)]) == 2
    assert "the pipeline (or a job it trains) changed since execution" in capsys.readouterr().err
    write_job()
    assert main(["run", str(path), "--resume", "--store", str(store)]) == 1  # unchanged: resumes, the gate fails again
    out = capsys.readouterr().out
    assert "resuming execution" in out and "step train (train): finished before, skipped" in out
    path.write_text(pipeline_text("release", [RELEASE[0]]))
    assert main(["run", str(path), "--resume", "--store", str(store)]) == 2  # another pipeline now: refused
    capsys.readouterr()
    assert main(["run", str(path), "--store", str(store)]) == 0
    assert main(["run", str(path), "--resume", "--store", str(store)]) == 0
    assert "no stopped execution of release to resume: starting a new one" in capsys.readouterr().out
