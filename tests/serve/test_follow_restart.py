"""PostgreSQL restarts under a server that follows its alias and a training run that logs: nothing is lost.

One throwaway cluster (tests/store/postgres.py), a real ``kiln serve fol@production`` subprocess polling the alias
every 0.2 s, a client asking it for predictions all along, and a training run in another process (``kiln.Model.fit``
with the tracking callback, a step every few milliseconds, every step's loss recorded). While all three run,
PostgreSQL stops (fast shutdown: every connection is cut) and, once the outage has been seen by everyone, starts
again. What a user should see:

- predictions never need the database: every request is answered 200, by the version the server had;
- ``/livez`` and ``/readyz`` stay 200: ready means "answers predictions", which is true; the failed polls are counted
  in ``/metrics`` (``kiln_alias_poll_failures_total``) and logged once, with one info line when the alias can be
  read again, never a traceback;
- after the restart, a promotion reaches the server: the follower recovered;
- the run trains on through the outage without waiting on the database; afterwards every step's loss is in the
  store once, equal to the loss the fit computed, every epoch once, and the run is "finished".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from torch import nn

from kiln.export import register_module
from kiln.store import Store

from ._server import ServerProcess

pytestmark = pytest.mark.postgres

BODY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.5] * 4}]}

# The training run: kiln.Model.fit on a small regression, recorded by the tracking callback (every step's loss,
# written every 25 steps or 50 ms), and a callback that keeps every loss it saw (what the store must hold), reports
# progress on stdout and stops the fit when the test says so.
TRAIN = r"""
import json, logging, sys, threading, time
import torch
from torch import nn
import kiln
from kiln.data import ArrayDataset
from kiln.store import Store
from kiln.train.tracking import TrackingCallback

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
torch.set_num_threads(1)
url, blobs, truth = sys.argv[1:4]
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()


class Witness(kiln.Callback):
    def __init__(self):
        self.losses, self.epochs, self.slowest, self.last = {}, 0, 0.0, None

    def on_fit_start(self, model):
        print(model.run_id, flush=True)

    def on_train_batch_end(self, model, step, loss):
        now = time.monotonic()
        if self.last is not None:
            self.slowest = max(self.slowest, now - self.last)
        self.losses[step] = loss.item()
        if step % 50 == 0:
            print("step", step, flush=True)
        stop.wait(0.002)  # a few ms per step, as a real model's step would take
        self.last = time.monotonic()

    def on_epoch_end(self, model, epoch, logs):
        self.epochs += 1
        model.stop_training = stop.is_set()


torch.manual_seed(0)
x = torch.randn(512, 8)
data = ArrayDataset(x, x @ torch.randn(8, 1) + 0.1 * torch.randn(512, 1))
model = kiln.Model(nn.Linear(8, 1), loss="mse", optimizer="sgd", lr=1e-2, device="cpu")
witness = Witness()
tracking = TrackingCallback(Store(url, blobs=blobs), "through-a-restart", every=1, flush_steps=25, flush_seconds=0.05)
model.fit(data, epochs=10**6, batch_size=32, callbacks=[tracking, witness], verbose=0)
with open(truth, "w") as handle:
    json.dump({"losses": sorted(witness.losses.items()), "epochs": witness.epochs, "slowest": witness.slowest}, handle)
print("done", flush=True)
"""


def constant(value: float) -> nn.Module:
    """4 -> 2, answering ``[value, -value]`` for every row: each answer says which version computed it."""
    net = nn.Sequential(nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([value, -value]))
    return net.eval()


@dataclass
class Client:
    """One client asking for a prediction every 10 ms until stopped: (time, status, model_version) of each."""

    url: str
    answers: list[tuple[float, int, str | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._ask, daemon=True)
        self.thread.start()

    def _ask(self) -> None:
        deadline = time.monotonic() + 180
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    response = client.post("/v2/models/fol/infer", json=BODY)
                    version = response.json().get("model_version") if response.status_code == 200 else None
                    self.answers.append((time.monotonic(), response.status_code, version))
                except httpx.HTTPError as error:
                    self.answers.append((time.monotonic(), -1, repr(error)))
                self.stop.wait(0.01)  # the pace of a client, not a synchronisation

    def since(self, moment: float) -> list[tuple[float, int, str | None]]:
        return [answer for answer in self.answers if answer[0] >= moment]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


class Trainer:
    """The training run's process: its run id, the last step it reported, and its log in a file."""

    def __init__(self, url: str, blobs: Path, truth: Path) -> None:
        self.truth = truth
        self.log = tempfile.NamedTemporaryFile(prefix="kiln-train-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-c", TRAIN, url, str(blobs), str(truth)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        self.run_id = ""
        self.step = 0
        self.reader = threading.Thread(target=self._read, daemon=True)

    def wait_started(self) -> None:
        """Wait for the run's id, the fit's first line (it may take seconds to import torch)."""
        assert self.process.stdout is not None
        self.run_id = self.process.stdout.readline().strip()
        assert self.run_id, self.output()[-3000:]
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            words = line.split()
            if words[:1] == ["step"]:
                self.step = int(words[1])

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def finish(self) -> dict[str, Any]:
        """Tell it to stop after this epoch; what it saw: ``losses`` [[step, loss]], ``epochs``, ``slowest`` step."""
        assert self.process.stdin is not None
        self.process.stdin.write("stop\n")
        self.process.stdin.flush()
        assert self.process.wait(120) == 0, self.output()[-3000:]
        return json.loads(self.truth.read_text())

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()
        if self.reader.is_alive():
            self.reader.join(30)
        self.log.close()
        os.unlink(self.log.name)


def wait_for(condition: Callable[[], bool], what: str, *, timeout: float = 60.0, show: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s:\n{show()[-3000:]}")
        time.sleep(0.01)  # polling a real condition, bounded by the deadline


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


def test_postgres_restarts_while_a_server_follows_and_a_run_logs(tmp_path: Path) -> None:
    from store import postgres  # tests/store/postgres.py: a throwaway PostgreSQL 15 cluster

    if not postgres.available():
        pytest.skip(f"no PostgreSQL 15 server binaries in {postgres.BIN}")
    cluster = postgres.Cluster()
    try:
        url, blobs = cluster.url(cluster.create_database()), tmp_path / "blobs"
        store = Store(url, blobs=blobs)
        for value in (1.0, 2.0):
            register_module(constant(value), "fol", store=store, example_input=torch.zeros(2, 4), onnx=False)
        store.promote("fol", 1, "production")
        args = ("--blobs", str(blobs), "--poll-interval", "0.2", "--no-access-log")
        with ServerProcess("fol@production", url, *args) as server:
            trainer = Trainer(url, blobs, tmp_path / "seen.json")  # both start at once: each imports torch
            client: Client | None = None
            try:
                server.wait_ready()
                trainer.wait_started()
                client = Client(server.url)
                both = lambda: f"{server.output()}\n--- training run ---\n{trainer.output()}"  # noqa: E731
                wait_for(lambda: bool(store.metrics(trainer.run_id).get("batch_loss")), "metrics written", show=both)
                wait_for(lambda: len(client.answers) >= 5, "predictions before the outage", show=both)

                cluster.stop("fast")
                stopped, step_at_stop = time.monotonic(), trainer.step
                wait_for(lambda: "cannot read which version fol@production names" in server.output(),
                         "warning from the follower", show=both)  # fmt: skip
                wait_for(lambda: "kept in memory until the store answers" in trainer.output(),
                         "warning from the training run", show=both)  # fmt: skip
                wait_for(lambda: trainer.step >= step_at_stop + 100, "training steps during the outage", show=both)
                wait_for(lambda: len(client.since(stopped)) >= 20, "predictions during the outage", show=both)
                assert httpx.get(server.url + "/livez").status_code == 200
                ready = httpx.get(server.url + "/readyz")
                assert (ready.status_code, ready.json()) == (200, {"ready": True})
                assert metric(server.url, "kiln_alias_poll_failures_total") >= 1
                cluster.start()
                restarted = time.monotonic()

                wait_for(lambda: "fol@production can be read again: it names version 1" in server.output(),
                         "the follower reading the alias again", show=both)  # fmt: skip
                store.promote("fol", 2, "production")  # the test's own pooled connections were cut too
                wait_for(lambda: any(v == "2" for _, _, v in client.answers), "fol@2 served after the restart",
                         show=both)  # fmt: skip
                wait_for(lambda: "the store answers again" in trainer.output(), "the run writing again", show=both)
                seen = trainer.finish()
                logged, run = store.metrics(trainer.run_id), store.run(trainer.run_id)
            finally:
                if client is not None:
                    client.close()
                trainer_output = trainer.output()
                trainer.close()
            assert server.terminate() == 0, server.output()[-3000:]
            served = server.output()
        store.close()
    finally:
        cluster.close()

    assert client is not None
    outage = [a for a in client.answers if stopped <= a[0] < restarted]
    assert len(outage) >= 20 and all(status == 200 and version == "1" for _, status, version in outage), outage
    assert all(status == 200 for _, status, _ in client.answers), [a for a in client.answers if a[1] != 200][:5]
    versions = [version for _, _, version in client.answers]
    assert versions == sorted(versions) and set(versions) == {"1", "2"}  # 1 until the promotion, then 2
    assert served.count("cannot read which version fol@production names") == 1, served[-3000:]
    assert served.count("can be read again") == 1 and "switched from fol@1 to fol@2" in served
    assert "Traceback" not in served, served[-3000:]
    assert trainer_output.count("kept in memory until the store answers") == 1, trainer_output[-3000:]
    assert trainer_output.count("the store answers again") == 1 and "Traceback" not in trainer_output
    assert seen["slowest"] < 5.0, f"a training step waited {seen['slowest']:.1f} s on the database"
    losses = [(step, loss) for step, loss in seen["losses"]]
    assert losses[-1][0] > step_at_stop + 100 and [s for s, _ in losses] == list(range(1, len(losses) + 1))
    assert logged["batch_loss"] == losses  # every step once, in order, with the loss the fit computed
    assert [value for _, value in logged["epoch"]] == [float(epoch) for epoch in range(seen["epochs"])]
    assert run.status == "finished"
