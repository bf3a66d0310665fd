"""`kiln run pipeline.toml`: steps, outputs by name, the gate, the execution's record, and bad pipelines."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.errors import KilnError
from kiln.jobs.execution import read_record
from kiln.jobs.pipeline import load_pipeline
from kiln.store import Store

from .conftest import RELEASE, WriteJob, pipeline_text


@pytest.fixture
def release(tmp_path: Path, write_job: WriteJob) -> Path:
    write_job()
    path = tmp_path / "pipeline.toml"
    path.write_text(pipeline_text("digits-release", RELEASE))
    return path


def test_a_release_trains_evaluates_gates_registers_promotes_exports(
    release: Path, store: Store, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["run", str(release), "--store", str(store.path)]) == 0
    out = capsys.readouterr().out
    (execution,) = [r for r in store.runs() if r.tags.get("kiln.kind") == "pipeline"]
    (train,) = [r for r in store.runs() if r.tags.get("kiln.kind") == "train"]
    assert out.endswith(f"pipeline digits-release finished: execution {execution.id}\n"), out
    assert "gate: no digits@production yet: nothing to beat" in out
    info = store.run(execution.id)
    assert info.status == "finished" and info.name == "digits-release"
    assert info.params["sha256"] == load_pipeline(release).sha256 == info.tags["kiln.pipeline.sha256"]
    assert info.params["pipeline"]["jobs"]["train"]["fit"]["epochs"] == 2  # the resolved job, recorded
    steps = read_record(store, info)["steps"]
    assert [(s["name"], s["status"]) for s in steps] == [(s["name"], "finished") for s in RELEASE]
    outputs = {s["name"]: s["outputs"] for s in steps}
    assert outputs["train"]["run_id"] == train.id and outputs["register"]["version"] == 1
    assert steps[3]["inputs"]["run"] == train.id  # ${train.run_id}, resolved
    # What the steps made points back at the execution.
    assert train.tags["kiln.pipeline.run"] == execution.id and train.tags["kiln.pipeline.step"] == "train"
    version = store.version("digits@production")
    assert version.version == 1 and version.run_id == train.id and version.tags["kiln.pipeline.run"] == execution.id
    assert version.metrics["test_accuracy"] == outputs["evaluate"]["metrics"]["test_accuracy"]
    assert version.metrics["val_accuracy"] == outputs["train"]["metrics"]["val_accuracy"]
    assert version.metrics["test_accuracy"] == store.run(train.id).latest["test_accuracy"]  # two ways, one number
    exported = release.parent / "exported" / "v1"
    assert sorted(p.name for p in exported.iterdir()) == sorted(version.files)
    for name, blob in version.files.items():
        assert hashlib.sha256((exported / name).read_bytes()).hexdigest() == blob.sha256
    assert info.latest["steps_finished"] == len(RELEASE) and "evaluate.test_accuracy" in info.latest

    assert main(["pipelines", "list", "--store", str(store.path)]) == 0
    listing = capsys.readouterr().out
    assert execution.id[:12] in listing and "6/6 finished" in listing and "digits-release" in listing
    assert main(["pipelines", "show", execution.id[:8], "--store", str(store.path)]) == 0
    shown = capsys.readouterr().out
    assert "version=1" in shown and f"run_id={train.id[:12]}" in shown and "test_accuracy=" in shown


def test_a_gate_that_fails_stops_before_registering(
    release: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(release), "--store", str(store.path)]) == 0
    capsys.readouterr()
    production = store.version("digits@production")
    # The same seed trains the same model again: equal, not 0.002 better.
    assert main(["run", str(release), "--store", str(store.path)]) == 1
    err = capsys.readouterr().err
    value = production.metrics["test_accuracy"]
    assert err == f"not promoted: {value:.3f} < {value + 0.002:.3f} (digits@production = v1)\n", err
    assert [v.version for v in store.versions("digits")] == [1] and store.version("digits@production").version == 1
    failed = next(r for r in store.runs() if r.tags.get("kiln.kind") == "pipeline")
    assert failed.status == "failed"
    steps = read_record(store, store.run(failed.id))["steps"]
    assert [s["status"] for s in steps] == ["finished", "finished", "failed", "pending", "pending", "pending"]
    assert steps[2]["outputs"] == {"passed": False, "value": value, "required": value + 0.002, "incumbent": "digits@1"}
    assert steps[2]["error"] == err.strip()


def test_a_threshold_gate_and_a_shell_step_with_outputs(tmp_path: Path, write_job: WriteJob, store: Store) -> None:
    write_job()
    marker = tmp_path / "shell.txt"
    steps = [
        RELEASE[0],
        {"name": "gate", "kind": "gate", "check": "val_accuracy > 0.5", "metrics": "train"},
        {
            "name": "note",
            "kind": "shell",
            "command": [
                sys.executable,
                "-c",
                "import sys; open(sys.argv[1], 'w').write(sys.argv[2])",
                str(marker),
                "run ${train.run_id} passed ${gate.passed}",
            ],
        },
        {"name": "fail", "kind": "shell", "command": [sys.executable, "-c", "raise SystemExit(3)"]},
    ]
    path = tmp_path / "pipeline.toml"
    path.write_text(pipeline_text("checks", steps))
    with pytest.raises(KilnError, match=r"^step fail \(shell\): shell: .* exited with status 3$"):
        from kiln.jobs.execution import run_pipeline

        run_pipeline(load_pipeline(path), store=store)
    train = next(r for r in store.runs() if r.tags.get("kiln.kind") == "train")
    assert marker.read_text() == f"run {train.id} passed True"


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            [{"kind": "trian", "job": "job.toml"}],
            "steps[0].kind: expected one of train, evaluate, gate, register, "
            'promote, export, shell; did you mean "train"?',
        ),
        ([{"kind": "train", "job": "job.toml", "epochs": 3}], "steps[0] (train).epochs: unknown key; valid keys"),
        (
            [{"kind": "train", "job": "job.toml", "overrides": ["fit.epochs=ten"]}],
            'steps[0] (train).job: fit.epochs: expected an integer, got "ten"',
        ),
        ([{"kind": "train", "job": "nothere.toml"}], "steps[0] (train).job: job config"),
        (
            [{"kind": "train", "job": "job.toml", "overrides": ["model.module=kiln_test_nets:nope"]}],
            "steps[0] (train).job: model.module: module 'kiln_test_nets' has no attribute 'nope'",
        ),
        (
            [RELEASE[0], {"kind": "register", "run": "${trian.run_id}", "model": "digits"}],
            "steps[1] (register).run: ${trian.run_id} names no earlier step; did you mean train?",
        ),
        (
            [RELEASE[0], {"kind": "register", "run": "${train.version}", "model": "digits"}],
            "steps[1] (register).run: ${train.version}: a train step outputs run_id, metrics",
        ),
        (
            [RELEASE[0], {"kind": "promote", "model": "digits", "version": "${register.version}", "alias": "prod"}],
            "steps[1] (promote).version: ${register.version} names no earlier step",
        ),
        (
            [RELEASE[0], {"kind": "gate", "model": "digits", "check": "test_accuracy => production"}],
            "steps[1] (gate).check: expected",
        ),
        (
            [RELEASE[0], {"kind": "gate", "check": "test_accuracy >= production"}],
            "steps[1] (gate).model: the check compares with an alias; name the model",
        ),
        (
            [RELEASE[0], {"kind": "promote", "model": "digits", "version": 1, "alias": "Prod"}],
            "steps[1] (promote): invalid alias 'Prod'",
        ),
        ([RELEASE[0], RELEASE[0]], "steps[1] (train).name: 'train' is already the name of an earlier step"),
        ([RELEASE[0], {"kind": "evaluate", "split": "test"}], "steps[1] (evaluate): set run"),
        ([], "steps: missing"),
    ],
)
def test_bad_pipelines_fail_before_any_step(
    tmp_path: Path, write_job: WriteJob, store: Store, steps: list, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_job()
    path = tmp_path / "pipeline.toml"
    path.write_text(pipeline_text("bad", steps))
    assert main(["run", str(path), "--store", str(store.path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kiln: error: {message}") and err.count("\n") == 1, err
    assert store.runs() == []  # nothing ran, nothing was recorded


def test_command_line_overrides_reach_a_train_steps_job(release: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = load_pipeline(release, ["train.fit.epochs=3", "train.model.lr=0.05"])
    job = pipeline.jobs["train"].config
    assert (job.fit.epochs, job.model.lr) == (3, 0.05) and pipeline.sha256 != load_pipeline(release).sha256
    for override, message in [
        ("trian.fit.epochs=3", "trian.fit.epochs: no step 'trian'; did you mean train?"),
        (
            "gate.check=x",
            "gate.check: 'gate' is a gate step; only a train step's job takes overrides (edit the pipeline file "
            "for the others)",
        ),
        ("train.fit.epochs=ten", 'steps[0] (train).job: fit.epochs: expected an integer, got "ten"'),
    ]:
        assert main(["run", str(release), override, "--store", str(release.parent / "store")]) == 2
        assert capsys.readouterr().err == f"kiln: error: {message}\n"


def test_evaluating_the_registered_package_gives_the_runs_numbers(
    tmp_path: Path, write_job: WriteJob, store: Store
) -> None:
    """register rebuilds the run's weights from its last checkpoint; the package, loaded back, measures the same."""
    from kiln.jobs.execution import run_pipeline

    write_job()
    steps = [
        RELEASE[0],
        {"name": "register", "kind": "register", "run": "${train.run_id}", "model": "digits", "onnx": False},
        {"name": "packaged", "kind": "evaluate", "model": "digits@${register.version}", "split": "test"},
        {"name": "validation", "kind": "evaluate", "run": "${train.run_id}", "split": "validation"},
    ]
    path = tmp_path / "pipeline.toml"
    path.write_text(pipeline_text("roundtrip", steps))
    result = run_pipeline(load_pipeline(path), store=store)
    trained = result.outputs("train")["metrics"]
    assert result.outputs("packaged")["metrics"] == {
        "test_accuracy": trained["test_accuracy"],
        "test_loss": trained["test_loss"],
    }
    assert result.outputs("packaged")["model"] == "digits@1"
    assert result.outputs("validation")["metrics"]["val_accuracy"] == trained["val_accuracy"]
    assert store.version("digits@1").metrics == trained  # the train step's metrics, its only step about the run
