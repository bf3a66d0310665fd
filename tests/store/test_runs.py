"""Tracked runs: params, buffered metrics, status, artifacts, listing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from kiln.errors import ConfigError, InvalidNameError, StoreError
from kiln.store import Store


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
