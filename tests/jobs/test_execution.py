"""What a pipeline execution leaves on disk: a finished one prunes its train steps' checkpoints as
`[pipeline] keep_checkpoints` says, a stopped one keeps them all (to resume). Real pipelines on digits."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from kiln.cli import main
from kiln.jobs.execution import run_pipeline
from kiln.jobs.pipeline import load_pipeline
from kiln.jobs.restore import restore_run
from kiln.jobs.steps import GateFailed
from kiln.store import Store
from kiln.train.checkpoint import list_checkpoints

from .conftest import WriteJob, pipeline_text

# Two epochs, a checkpoint after each: every train step writes two.
CHECKPOINTS = ["ckpt-0000000017.safetensors", "ckpt-0000000034.safetensors"]  # 17 steps an epoch
REGISTER = {"name": "register", "kind": "register", "run": "${train.run_id}", "model": "digits", "onnx": False}


def _names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def _write(tmp_path: Path, steps: list[dict[str, Any]], **section: Any) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(pipeline_text("digits-release", steps, **section))
    return path


@pytest.mark.parametrize(
    ("keep", "registered_left", "other_left"),
    [
        ("auto", [], CHECKPOINTS[-1:]),  # the registered run's weights are in the store; the other run keeps its last
        ("last", CHECKPOINTS[-1:], CHECKPOINTS[-1:]),
        ("all", CHECKPOINTS, CHECKPOINTS),
    ],
)
def test_a_finished_execution_prunes_its_checkpoints(
    keep: str,
    registered_left: list[str],
    other_left: list[str],
    tmp_path: Path,
    write_job: WriteJob,
    store: Store,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_job(fit={"epochs": 2})
    note = [sys.executable, "-c", "import sys; open(sys.argv[1], 'w').write('mine')", "${train.checkpoint}/notes.txt"]
    steps = [
        {"name": "train", "kind": "train", "job": "job.toml"},
        {"name": "other", "kind": "train", "job": "job.toml", "overrides": ["model.lr=0.02"]},
        {"name": "note", "kind": "shell", "command": note},  # a file of the user's in a checkpoint folder
        REGISTER,
    ]
    path = _write(tmp_path, steps, keep_checkpoints=keep)
    assert main(["run", str(path), "--store", str(store.path)]) == 0
    (execution,) = [run for run in store.runs() if run.tags.get("kiln.kind") == "pipeline"]
    workdir = store.path / "jobs" / "pipelines" / execution.id
    assert _names(workdir / "train") == sorted([*registered_left, "notes.txt"])  # never anything but checkpoints
    assert _names(workdir / "other") == other_left
    out = capsys.readouterr().out
    removed = 4 - len(registered_left) - len(other_left)
    assert (f"removed {removed} checkpoint file(s)" in out) == (removed > 0), out
    # The run that was not registered can still be rebuilt (evaluated, registered) from what is left.
    other = next(run for run in store.runs() if run.tags.get("kiln.pipeline.step") == "other")
    _, _, module = restore_run(store, other.id, trust=["kiln_test_nets"])
    assert sum(parameter.numel() for parameter in module.parameters()) > 0


def test_a_stopped_execution_keeps_every_checkpoint_and_a_finished_one_leaves_no_folder(
    tmp_path: Path, write_job: WriteJob, store: Store
) -> None:
    write_job(fit={"epochs": 2})
    train = {"name": "train", "kind": "train", "job": "job.toml"}
    unreachable = {"name": "gate", "kind": "gate", "check": "val_accuracy > 1.5", "metrics": "train"}
    with pytest.raises(GateFailed, match="not promoted"):
        run_pipeline(load_pipeline(_write(tmp_path, [train, unreachable])), store=store)
    (failed,) = [run for run in store.runs() if run.tags.get("kiln.kind") == "pipeline"]
    assert failed.status == "failed"
    folder = store.path / "jobs" / "pipelines" / failed.id / "train"
    assert [path.name for path in list_checkpoints(folder)] == CHECKPOINTS  # all of them, for --resume

    finished = run_pipeline(load_pipeline(_write(tmp_path, [train, REGISTER])), store=store)
    assert not (store.path / "jobs" / "pipelines" / finished.run_id).exists()  # registered: nothing left to keep
    assert store.version("digits@1").run_id == finished.outputs("train")["run_id"]
