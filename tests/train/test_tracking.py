"""TrackingCallback records a real fit into a real store; fingerprint() changes exactly when the data does."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import kiln
from kiln.data import ArrayDataset
from kiln.export import register_module
from kiln.store import Store
from kiln.store.liveness import machine_key
from kiln.train.tracking import TrackingCallback, fingerprint


@pytest.fixture
def data(digits: tuple[np.ndarray, np.ndarray]) -> tuple[ArrayDataset, ArrayDataset]:
    x, y = digits
    return ArrayDataset(x[:640], y[:640]).split(0.75, seed=0)  # 480 train rows: 8 steps of 64 per epoch


def _model() -> kiln.Model:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    return kiln.Model(net, loss="cross_entropy", optimizer="adamw", lr=1e-2, metrics=["accuracy"], device="cpu")


def test_fit_is_recorded(tmp_path: Path, data: tuple[ArrayDataset, ArrayDataset]) -> None:
    train, val = data
    store = Store(tmp_path / "store")
    model = _model()
    tracking = TrackingCallback(
        store, "digits-mlp", params={"hidden": 32}, tags={"team": "vision"}, data=train, every=2
    )
    model.fit(train, epochs=3, batch_size=64, validation=val, callbacks=[tracking], verbose=0)
    run = store.run(model.run_id)
    assert (run.name, run.status, run.tags) == ("digits-mlp", "finished", {"team": "vision"})
    assert run.params["epochs"] == 3 and run.params["batch_size"] == 64 and run.params["hidden"] == 32
    assert run.params["optimizer"] == "AdamW" and run.params["data_fingerprint"] == fingerprint(train)
    assert run.system["torch"] == torch.__version__ and run.system["device"] == "cpu"
    metrics = store.metrics(run.id)
    assert [step for step, _ in metrics["batch_loss"]] == list(range(2, 25, 2))  # every 2nd of 24 steps
    assert [step for step, _ in metrics["val_loss"]] == [8, 16, 24]
    assert [value for _, value in metrics["epoch"]] == [0.0, 1.0, 2.0]
    history = model.history.history  # type: ignore[union-attr]
    assert [v for _, v in metrics["loss"]] == pytest.approx(history["loss"])
    assert run.latest["val_accuracy"] == pytest.approx(history["val_accuracy"][-1])


class _Probe(kiln.Callback):
    """Counts stored batch-loss rows at the last batch of the first epoch and right after it."""

    def __init__(self, store: Store) -> None:
        self.store, self.seen = store, []

    def on_train_batch_end(self, model: Any, step: int, loss: torch.Tensor) -> None:
        if step == model.steps_per_epoch:
            self.seen.append(len(self.store.metrics(model.run_id).get("batch_loss", [])))

    def on_epoch_end(self, model: Any, epoch: int, logs: dict[str, float]) -> None:
        if epoch == 0:
            self.seen.append(len(self.store.metrics(model.run_id).get("batch_loss", [])))


def test_batch_losses_are_written_in_batches(tmp_path: Path, data: tuple[ArrayDataset, ArrayDataset]) -> None:
    store = Store(tmp_path / "store")
    probe = _Probe(store)
    model = _model()
    model.fit(data[0], epochs=2, batch_size=64, callbacks=[TrackingCallback(store, "r", every=1), probe], verbose=0)
    assert probe.seen == [0, 8]  # nothing written during the epoch, all 8 rows in one write at its end


class _Beats(kiln.Callback):
    """Records, at each step of the first epoch, how many batch losses are stored and the run's heartbeat."""

    def __init__(self, store: Store) -> None:
        self.store, self.seen, self.heartbeats = store, [], []

    def on_train_batch_end(self, model: Any, step: int, loss: torch.Tensor) -> None:
        if step <= model.steps_per_epoch:
            self.seen.append(len(self.store.metrics(model.run_id).get("batch_loss", [])))
            self.heartbeats.append(self.store.run(model.run_id).heartbeat)


def test_a_long_epoch_still_writes_within_flush_seconds(tmp_path: Path, data: tuple[ArrayDataset, ArrayDataset]):
    store = Store(tmp_path / "store")
    beats = _Beats(store)
    tracking = TrackingCallback(store, "r", every=2, flush_seconds=0)  # every sample is past due: write it now
    model = _model()
    model.fit(data[0], epochs=1, batch_size=64, callbacks=[tracking, beats], verbose=0)
    assert beats.seen == [0, 1, 1, 2, 2, 3, 3, 4]  # written at each sampled step, not at the epoch end
    assert beats.heartbeats == sorted(beats.heartbeats) and beats.heartbeats[1] > store.run(model.run_id).start_time
    with pytest.raises(kiln.KilnError, match="flush_seconds must be a finite number"):
        TrackingCallback(store, "r", flush_seconds=float("inf"))


class _Explode(kiln.Callback):
    def __init__(self, error: type[BaseException]) -> None:
        self.error = error

    def on_epoch_start(self, model: Any, epoch: int) -> None:
        if epoch == 1:
            raise self.error("stop")


@pytest.mark.parametrize(("error", "status"), [(RuntimeError, "failed"), (KeyboardInterrupt, "killed")])
def test_failed_and_interrupted_fits_are_recorded(
    tmp_path: Path, data: tuple[ArrayDataset, ArrayDataset], error: type[BaseException], status: str
) -> None:
    store = Store(tmp_path / "store")
    model = _model()
    with pytest.raises(error):
        model.fit(
            data[0], epochs=3, batch_size=64, callbacks=[TrackingCallback(store, "r"), _Explode(error)], verbose=0
        )
    run = store.run(model.run_id)
    assert run.status == status and run.end_time is not None
    assert [v for _, v in store.metrics(run.id)["epoch"]] == [0.0]


def test_resumed_fit_continues_its_run(tmp_path: Path, data: tuple[ArrayDataset, ArrayDataset]) -> None:
    store, checkpoints = Store(tmp_path / "store"), tmp_path / "checkpoints"
    first = _model()
    with pytest.raises(KeyboardInterrupt):
        first.fit(
            data[0],
            epochs=3,
            batch_size=64,
            checkpoint=checkpoints,
            seed=0,
            verbose=0,
            callbacks=[TrackingCallback(store, "r"), _Explode(KeyboardInterrupt)],
        )
    assert store.run(first.run_id).status == "killed"
    second = _model()
    second.fit(
        data[0],
        epochs=3,
        batch_size=64,
        checkpoint=checkpoints,
        resume="latest",
        seed=0,
        verbose=0,
        callbacks=[TrackingCallback(store, "r")],
    )
    assert second.run_id == first.run_id and len(store.runs()) == 1
    run = store.run(first.run_id)
    assert run.status == "finished"
    assert [v for _, v in store.metrics(run.id)["epoch"]] == [0.0, 1.0, 2.0]


def test_registered_version_links_back_to_run_and_data(tmp_path: Path, data: tuple[ArrayDataset, ArrayDataset]):
    store = Store(tmp_path / "store")
    model = _model()
    model.fit(data[0], epochs=1, batch_size=64, callbacks=[TrackingCallback(store, "r", data=data[0])], verbose=0)
    version = register_module(
        model.module,
        "digits",
        store=store,
        example_input=data[0].x[:1],
        onnx=False,
        run_id=model.run_id,
        data_fingerprint=model.data_fingerprint,
    )  # type: ignore[attr-defined]
    assert (version.run_id, version.data_fingerprint) == (model.run_id, fingerprint(data[0]))


def test_fingerprint_of_tensors(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    base = fingerprint(ArrayDataset(x, y))
    assert base.startswith("sha256:") and len(base) == 7 + 64
    assert fingerprint(ArrayDataset(x.copy(), y.copy())) == base
    assert fingerprint((torch.as_tensor(x), torch.as_tensor(y))) == base
    changed = x.copy()
    changed[100, 5] += 1e-3
    assert fingerprint(ArrayDataset(changed, y)) != base
    assert fingerprint(ArrayDataset(x.astype(np.float16), y)) != base
    assert fingerprint(ArrayDataset(x, y[::-1].copy())) != base


def test_fingerprint_of_files(tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    (root / "a" / "1.png").write_bytes(b"one")
    (root / "2.png").write_bytes(b"two")
    base = fingerprint(root)

    class Listing:
        def __init__(self) -> None:
            self.files = [root / "2.png", root / "a" / "1.png"]

    assert fingerprint(Listing()) == base
    os.utime(root / "2.png", ns=(1, 1))
    touched = fingerprint(root)
    assert touched != base
    (root / "a" / "1.png").write_bytes(b"one!")
    assert fingerprint(root) not in (base, touched)
    with pytest.raises(kiln.KilnError, match="cannot fingerprint"):
        fingerprint(object())


# Trains "forever" into the store at KILN_HOME; prints the run id at the first step, then keeps training.
CHILD_FIT = """
import sys, torch
from torch import nn
import kiln

class Announce(kiln.Callback):
    def on_train_batch_end(self, model, step, loss):
        if step == 1:
            print(model.run_id, flush=True)

torch.set_num_threads(1)
x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
model = kiln.Model(nn.Linear(8, 2), loss="cross_entropy", lr=1e-2, device="cpu")
model.fit((x, y), epochs=10**9, batch_size=16, run="doomed", callbacks=[Announce()], verbose=0, doctor=False)
"""


def _recorded(root: Path) -> dict[str, tuple[str, float | None]]:
    with contextlib.closing(sqlite3.connect(root / "kiln.db")) as connection:
        return {i: (s, e) for i, s, e in connection.execute("SELECT id, status, end_time FROM runs")}


@pytest.mark.skipif(machine_key() is None, reason="pids are judged only where /proc tells (Linux)")
def test_sigkilled_fit_is_reported_killed(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = Store(root)
    finished = store.start_run("done")
    finished.finish()
    live = store.start_run("live")  # this process's own, still running
    env = {**os.environ, "KILN_HOME": str(root), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    with (
        (tmp_path / "child.err").open("w") as errors,
        subprocess.Popen(
            [sys.executable, "-c", CHILD_FIT], stdout=subprocess.PIPE, stderr=errors, text=True, env=env
        ) as child,
    ):
        try:
            assert child.stdout is not None
            ready, _, _ = select.select([child.stdout], [], [], 300)  # the child's line, not a sleep
            doomed = child.stdout.readline().strip() if ready else ""
            assert len(doomed) == 32, (tmp_path / "child.err").read_text()
        finally:
            child.kill()
            child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    before = _recorded(root)
    assert before[doomed] == ("running", None)  # SIGKILL left it "running" in the database

    done = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "runs", "list"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    rows = {line.split("│")[1].strip(): line for line in done.stdout.splitlines() if line.count("│") > 2}
    assert "killed" in rows[doomed[:12]] and "doomed" in rows[doomed[:12]]
    assert "running" in rows[live.id[:12]] and "finished" in rows[finished.id[:12]]

    after = _recorded(root)
    assert after[doomed][0] == "killed" and after[doomed][1] is not None  # recorded, with an end time
    assert after[live.id] == before[live.id] and after[finished.id] == before[finished.id]  # untouched
    assert {r.id: r.status for r in store.runs()} == {doomed: "killed", live.id: "running", finished.id: "finished"}
    assert store.run(doomed).params["epochs"] == 10**9
    live.finish()
