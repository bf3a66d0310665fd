"""The jobs verbs as a user types them: overrides stand anywhere among the options of `kiln train`, `kiln runs rerun`
and `kiln run`, and each verb's --help shows an example. All through the real `kiln` parser (`kiln.cli.main`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.cli import main
from kiln.jobs.config import load_job
from kiln.jobs.train import run_job
from kiln.store import Store

from .conftest import WriteJob, pipeline_text

BAD_EPOCHS = 'fit.epochs: expected an integer, got "ten"'

# Where an override stands among the words: TARGET is the config (or run id, or pipeline), BAD the override under
# test, GOOD another override.
POSITIONS = {
    "before the options": ["TARGET", "BAD", "--store", "STORE"],
    "after the options": ["TARGET", "--store", "STORE", "BAD"],
    "on both sides of the options": ["TARGET", "GOOD", "--store", "STORE", "BAD"],
    "after options that precede the target": ["--store", "STORE", "TARGET", "BAD"],
}


def _words(position: str, target: str, store: Path, bad: str, good: str) -> list[str]:
    values = {"TARGET": target, "STORE": str(store), "BAD": bad, "GOOD": good}
    return [values.get(word, word) for word in POSITIONS[position]]


@pytest.fixture
def one_step(tmp_path: Path, write_job: WriteJob) -> Path:
    """A pipeline that only trains the job next to it (job.toml)."""
    write_job()
    path = tmp_path / "pipeline.toml"
    path.write_text(pipeline_text("digits-train", [{"name": "train", "kind": "train", "job": "job.toml"}]))
    return path


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize(("verb", "step"), [("train", ""), ("run", "train.")])
def test_overrides_reach_the_job_wherever_they_stand(
    verb: str, step: str, position: str, one_step: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    # A bad value fails validation before anything trains: the override reached the job wherever it stood.
    target = one_step if verb == "run" else one_step.parent / "job.toml"
    words = _words(position, str(target), store.path, f"{step}fit.epochs=ten", f"{step}model.lr=0.02")
    assert main([verb, *words]) == 2
    where = "steps[0] (train).job: " if verb == "run" else ""
    assert capsys.readouterr().err == f"kiln: error: {where}{BAD_EPOCHS}\n"
    assert store.runs() == []


def test_train_applies_overrides_before_and_after_the_options_in_order(
    write_job: WriteJob, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_job()
    assert main(["train", str(path), "fit.epochs=1", "--store", str(store.path), "model.lr=0.02", "fit.epochs=2"]) == 0
    (run,) = store.runs()
    info = store.run(run.id)
    assert info.params["overrides"] == ["fit.epochs=1", "model.lr=0.02", "fit.epochs=2"]
    assert info.params["job"]["fit"]["epochs"] == 2 and info.params["job"]["model"]["lr"] == 0.02  # the last wins
    assert capsys.readouterr().out.startswith(f"run {run.id} finished: ")


def test_rerun_takes_overrides_anywhere(write_job: WriteJob, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    original = run_job(load_job(write_job(fit={"epochs": 1})), store=store)
    trusted = ["--trust", "kiln_test_nets"]
    for position in POSITIONS:
        words = _words(position, original.run_id[:10], store.path, "fit.epochs=ten", "model.lr=0.02")
        assert main(["runs", "rerun", *words, *trusted]) == 2, position
        assert capsys.readouterr().err == f"kiln: error: {BAD_EPOCHS}\n", position
    assert len(store.runs()) == 1
    command = [
        "runs",
        "rerun",
        original.run_id[:10],
        "--register",
        "fit.epochs=2",
        *trusted,
        "--store",
        str(store.path),
    ]
    assert main(command) == 0
    rerun = next(run for run in store.runs() if run.id != original.run_id)
    assert store.run(rerun.id).params["job"]["fit"]["epochs"] == 2
    assert f"rerun of {original.run_id[:10]}: {rerun.id} finished: " in capsys.readouterr().out


def test_run_applies_an_override_after_the_options(
    one_step: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(one_step), "--store", str(store.path), "train.fit.epochs=1"]) == 0
    trained = [run for run in store.runs() if store.run(run.id).tags.get("kiln.kind") == "train"]
    assert len(trained) == 1 and store.run(trained[0].id).params["job"]["fit"]["epochs"] == 1
    assert "pipeline digits-train finished: execution " in capsys.readouterr().out


@pytest.mark.parametrize(
    ("verb", "usage"),
    [
        (["train"], "kiln train [-h] [--store PATH|URL] [--blobs PATH] config [SECTION.KEY=VALUE ...]"),
        (["runs", "rerun"], "kiln runs rerun"),
        (["run"], "kiln run"),
    ],
)
def test_help_shows_an_example_and_overrides_are_optional(
    verb: list[str], usage: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one usage line, whatever the terminal
    with pytest.raises(SystemExit) as exited:
        main([*verb, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: {usage}" in out
    assert f"example: kiln {' '.join(verb)} " in out and "before, between or after the options" in out
    # Only the first positional is required; an unknown option is still refused.
    with pytest.raises(SystemExit) as exited:
        main(verb)
    assert exited.value.code == 2
    first = {"train": "config", "rerun": "run_id", "run": "pipeline"}[verb[-1]]
    assert capsys.readouterr().err.endswith(f"error: the following arguments are required: {first}\n")
    with pytest.raises(SystemExit) as exited:
        main([*verb, "x.toml", "--stroe", "s", "fit.epochs=1"])
    assert exited.value.code == 2 and "error: unrecognized arguments: --stroe s" in capsys.readouterr().err
