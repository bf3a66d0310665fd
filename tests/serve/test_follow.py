"""A server that follows its alias, end to end: a real `kiln serve` subprocess, a real store, a load generator.

Every version of ``fol`` answers ``[v, -v]`` whatever the input, so each response says which version computed it.
Promotion and rollback under load switch without one failed request; a version that fails to load (an untrusted
factory without an ONNX graph, a corrupted blob) leaves the old one serving and is logged once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import torch
from torch import nn

from kiln.cli import main
from kiln.errors import ConfigError
from kiln.export import register_module
from kiln.serve import KilnApp, ServeConfig, create_app
from kiln.serve.follow import follow_reference
from kiln.serve.runtime import load_runtime
from kiln.store import Store

from ._server import ServerProcess
from .conftest import client_for, run

POLL_S = 0.2
BODY = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [0.5] * 8}]}


def constant(value: float, width: int = 4) -> nn.Module:
    """``width`` -> 2 inputs, answering ``[value, -value]`` for every row."""
    net = nn.Sequential(nn.Linear(width, 2))
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([value, -value]))
    return net.eval()


def untrusted_factory() -> nn.Module:
    """A factory a server trusts only if told to (it lives in the tests, not in kiln nor an entry point)."""
    return constant(3.0)


def corrupt(store: Store, reference: str, file: str) -> None:
    blob = store.blobs.path(store.version(reference).files[file].sha256)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x40
    blob.chmod(0o644)  # blobs are stored read-only
    blob.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def followed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``fol``: 1 and 2 good, 3 with an untrusted factory, 4 with corrupted weights, 5 taking 6 features instead of
    4. All torch-only: an ONNX export costs seconds each, and the ONNX path loads through the same load_runtime as
    at startup (tests/serve/test_app.py). The subprocess tests move ``production``, the in-process ones
    ``staging``."""
    path = tmp_path_factory.mktemp("follow-store")
    example = torch.zeros(2, 4)
    with Store(path) as store:
        register_module(constant(1.0), "fol", store=store, example_input=example, onnx=False)
        register_module(constant(2.0), "fol", store=store, example_input=example, onnx=False)
        register_module(untrusted_factory(), "fol", store=store, example_input=example, factory=untrusted_factory,
                        onnx=False)  # fmt: skip
        register_module(constant(4.0), "fol", store=store, example_input=example, onnx=False)
        corrupt(store, "fol@4", "weights.safetensors")
        register_module(constant(5.0, width=6), "fol", store=store, example_input=torch.zeros(2, 6), onnx=False)
        store.promote("fol", 1, "production")
    return path


@pytest.fixture(scope="module")
def server(followed: Path) -> Iterator[ServerProcess]:
    with ServerProcess("fol@production", followed, "--poll-interval", str(POLL_S), "--no-access-log") as proc:
        proc.wait_ready()
        yield proc
        assert proc.terminate() == 0, proc.output()[-2000:]


@dataclass
class Answer:
    status: int
    version: str | None  # model_version in the body
    header: str | None  # Kiln-Model-Version
    value: float | None  # the first output: the version that computed it


@dataclass
class Load:
    """``clients`` threads posting v2 requests back to back until stopped (or 120 s or 20000 requests each)."""

    url: str
    clients: int = 3
    answers: list[list[Answer]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        self.answers = [[] for _ in range(self.clients)]
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.clients)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _client(self, index: int) -> None:
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set() and time.monotonic() < deadline and len(self.answers[index]) < 20000:
                try:
                    response = client.post("/v2/models/fol/infer", json=BODY)
                except httpx.HTTPError as error:
                    self.answers[index].append(Answer(-1, None, repr(error), None))
                    continue
                result = response.json() if response.status_code == 200 else {}
                value = result["outputs"][0]["data"][0] if result else None
                header = response.headers.get("kiln-model-version")
                self.answers[index].append(Answer(response.status_code, result.get("model_version"), header, value))

    def all_on(self, version: str, after: list[int]) -> bool:
        """True once every client has an answer past ``after`` (its counts then), and its latest is ``version``."""
        return all(len(a) > n and a[-1].version == version for a, n in zip(self.answers, after, strict=True))

    def counts(self) -> list[int]:
        return [len(a) for a in self.answers]


def wait_until(proc: ServerProcess, condition, what: str, timeout: float = 60.0) -> float:
    started = time.monotonic()
    proc.wait_for(condition, what, timeout=timeout)
    return time.monotonic() - started


def served_version(url: str) -> str:
    return httpx.get(url + "/v2/models/fol").json()["versions"][0]


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


def runs(answers: list[Answer]) -> list[str | None]:
    """The versions in order, each run of equal ones once: [1, 1, 2, 2, 1] -> [1, 2, 1]."""
    return [a.version for i, a in enumerate(answers) if i == 0 or answers[i - 1].version != a.version]


def load_seconds(output: str, reference: str) -> float:
    found = re.findall(rf"loaded {reference} \(.*?\) in ([0-9.]+) s, warmed up in ([0-9.]+) s", output)
    assert found, output[-2000:]
    return float(found[-1][0]) + float(found[-1][1])  # the latest load


def promote_and_wait(proc: ServerProcess, store: Path, version: int) -> None:
    with Store(store, create=False) as opened:
        opened.promote("fol", version, "production")
    wait_until(proc, lambda: served_version(proc.url) == str(version), f"fol@{version} served")


def test_promotion_and_rollback_switch_under_load_without_a_failed_request(server: ServerProcess, followed: Path):
    promote_and_wait(server, followed, 1)
    with Load(server.url) as load, Store(followed, create=False) as store:
        wait_until(server, lambda: min(load.counts()) >= 5, "answers from every client")
        for version, seen in ((2, 1), (1, 2)):  # promote, then roll back
            counts = load.counts()
            assert store.promote("fol", version, "production") == seen
            took = wait_until(server, lambda v=str(version), c=counts: load.all_on(v, c), f"every client on {version}")
            limit = POLL_S + load_seconds(server.output(), f"fol@{version}") + 3.0  # 3 s: a busy shared CI box
            assert took < limit, f"switched to fol@{version} after {took:.2f} s (limit {limit:.2f} s)"
            assert served_version(server.url) == str(version)
            info = httpx.get(server.url + "/metrics").text
            assert f'kiln_model_info{{model="fol",runtime="torch",version="{version}"}} 1' in info
    assert metric(server.url, 'kiln_model_switches_total{result="ok"}') >= 2
    for answers in load.answers:
        assert answers, "a client got no answer"
        failed = [a for a in answers if a.status != 200]
        assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:3]}"
        for answer in answers:  # the version named is the one that computed the answer, in the body and header
            assert answer.header == answer.version and answer.value == float(answer.version or "nan")
        assert runs(answers) == ["1", "2", "1"], runs(answers)  # each client saw one switch each way, no flapping
    assert "switched from fol@1 to fol@2" in server.output() and "switched from fol@2 to fol@1" in server.output()


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(server: ServerProcess, followed: Path):
    promote_and_wait(server, followed, 1)
    failed_before = metric(server.url, 'kiln_model_switches_total{result="failed"}')
    with Load(server.url, clients=1) as load, Store(followed, create=False) as store:
        for version, why in ((3, r"TrustError: .*untrusted_factory.* not trusted"),
                             (4, r"IntegrityError: fol@4 failed verification.*weights\.safetensors")):  # fmt: skip
            store.promote("fol", version, "production")
            line = f"not switching to fol@{version} (fol@production names it now): "
            wait_until(server, lambda line=line: line in server.output(), f"the line saying why fol@{version} failed")
            logged = [text for text in server.output().splitlines() if line in text]
            assert len(logged) == 1 and re.search(why, logged[0]), logged
            assert logged[0].rstrip().endswith("still serving fol@1 until fol@production names another version")
            polls = metric(server.url, "kiln_alias_polls_total")
            wait_until(server, lambda p=polls: metric(server.url, "kiln_alias_polls_total") >= p + 3, "three polls")
            assert sum(line in text for text in server.output().splitlines()) == 1  # not retried at every poll
            assert served_version(server.url) == "1"
            assert httpx.get(server.url + "/readyz").status_code == 200
        counts = load.counts()
        store.promote("fol", 2, "production")  # the alias moves on: the follower loads again
        wait_until(server, lambda: load.all_on("2", counts), "the client on 2")
    assert metric(server.url, 'kiln_model_switches_total{result="failed"}') == failed_before + 2
    (answers,) = load.answers
    assert all(a.status == 200 for a in answers) and runs(answers) == ["1", "2"]


# ---------------------------------------------------------------- in process: the decision, a poll, a switch


@pytest.mark.parametrize(
    ("reference", "follow", "expected"),
    [("fol@production", None, "fol@production"), ("fol@production", True, "fol@production"),
     ("fol@production", False, None), ("fol@3", None, None), ("fol", None, None), ("fol@latest", None, None),
     ("fol", True, "fol"), ("fol@latest", True, "fol@latest"), (Path("pkg"), None, None), (Path("pkg"), False, None)],
)  # fmt: skip
def test_which_references_are_followed(reference, follow, expected):
    assert follow_reference(reference, follow) == expected


def test_follow_on_something_that_never_moves_is_refused(followed: Path, capsys):
    with pytest.raises(ConfigError, match="package directory, which has no alias"):
        follow_reference(Path("pkg"), True)
    with pytest.raises(ConfigError, match="names one version, which never moves"):
        follow_reference("fol@3", True)
    assert main(["serve", "fol@3", "--store", str(followed), "--follow", "--port", "1"]) == 2  # before binding
    error = capsys.readouterr().err
    assert error.startswith("kiln: error: --follow needs an alias") and error.count("\n") == 1


@pytest.mark.parametrize("interval", [0, -1.0, "5"])
def test_poll_interval_must_be_positive(interval):
    with pytest.raises(ConfigError, match="poll_interval_s must be a number > 0"):
        ServeConfig(poll_interval_s=interval)


def app_on(followed: Path, **options) -> KilnApp:
    """An app following ``fol@staging`` whose own poll loop never fires during a test (the test calls poll())."""
    return create_app("fol@staging", store=followed, config=ServeConfig(poll_interval_s=3600, **options))


def test_no_follow_pins_the_version(followed: Path):
    assert create_app("fol@staging", store=followed, config=ServeConfig(follow=False)).follower is None
    assert app_on(followed).follower is not None


def test_requests_queued_before_a_switch_are_answered_by_the_old_runtime(followed: Path):
    with Store(followed, create=False) as store:
        store.promote("fol", 1, "staging")
    newer = load_runtime("fol@2", store=followed)
    body = {"inputs": [[0.5] * 4]}

    async def main() -> None:
        app = app_on(followed, max_batch_size=1)
        async with client_for(app) as client:
            old = app.batcher
            assert old is not None
            before = [asyncio.create_task(client.post("/v1/models/fol:predict", json=body)) for _ in range(32)]
            deadline = time.monotonic() + 30
            while old.depth < 4:  # bounded: let requests reach the old runtime's queue
                assert time.monotonic() < deadline and not all(task.done() for task in before)
                await asyncio.sleep(0)
            queued = old.depth
            app.switch(newer, reason="test")
            after = await asyncio.gather(*[client.post("/v1/models/fol:predict", json=body) for _ in range(8)])
            answered = await asyncio.gather(*before)
            for response in (*answered, *after):
                assert response.status_code == 200, response.text
                version = response.headers["kiln-model-version"]
                assert response.json()["outputs"] == [[float(version), -float(version)]]
            assert sum(r.headers["kiln-model-version"] == "1" for r in answered) >= queued
            assert {r.headers["kiln-model-version"] for r in after} == {"2"}
            meta = (await client.get("/v1/models/fol")).json()
            assert meta["version"] == "2" and meta["runtime"] == "torch"
            while old.depth or app.batcher is old:  # the old batcher drains and is closed in the background
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)

    run(main())


def test_a_poll_switches_refuses_broken_versions_once_and_logs_a_new_signature(
    followed: Path, caplog: pytest.LogCaptureFixture
):
    def lines(text: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if text in r.getMessage()]

    async def main(store: Store) -> None:
        app = app_on(followed)
        follower = app.follower
        assert follower is not None
        async with client_for(app) as client:
            assert app.runtime is not None and app.runtime.version == "1"
            await follower.poll(app)  # nothing moved
            assert app.runtime.version == "1" and not lines("switched")
            store.promote("fol", 2, "staging")
            await follower.poll(app)
            assert app.runtime.version == "2" and lines("fol@staging moved: switched from fol@1 to fol@2")
            assert (await client.get("/v2/models/fol")).json()["versions"] == ["2"]

            store.promote("fol", 3, "staging")  # untrusted factory, no ONNX graph
            for _ in range(3):
                await follower.poll(app)
            (refused,) = lines("not switching to fol@3")
            assert "TrustError" in refused and "not trusted" in refused and "\n" not in refused
            assert app.runtime.version == "2" and not lines("loaded fol@3")

            store.remove_alias("fol", "staging")
            await follower.poll(app)
            await follower.poll(app)
            (unreadable,) = lines("cannot read which version fol@staging names")
            assert "still serving fol@2" in unreadable

            store.promote("fol", 5, "staging")  # 6 features instead of 4: allowed, and said
            await follower.poll(app)
            assert lines("fol@staging can be read again: it names version 5")
            (changed,) = lines("fol@5 changes the signature")
            assert "float32 of shape (n, 4)" in changed and "float32 of shape (n, 6)" in changed
            assert app.runtime.version == "5"
            assert (await client.post("/v1/models/fol:predict", json={"inputs": [[0.5] * 6]})).json() == {
                "outputs": [[5.0, -5.0]]
            }
            assert (await client.post("/v1/models/fol:predict", json={"inputs": [[0.5] * 4]})).status_code == 422
            metrics = (await client.get("/metrics")).text
            assert 'kiln_model_switches_total{result="ok"} 2' in metrics
            assert 'kiln_model_switches_total{result="failed"} 1' in metrics
            assert "kiln_alias_polls_total 8" in metrics

    with Store(followed, create=False) as store, caplog.at_level(logging.INFO, logger="kiln.serve"):
        store.promote("fol", 1, "staging")
        run(main(store))


@pytest.mark.slow
def test_every_worker_follows_on_its_own(followed: Path):
    """`--workers 2`: each worker polls and switches by itself; fresh connections (spread over both) end on 2."""
    with Store(followed, create=False) as store:
        store.promote("fol", 1, "canary")
    args = ("--workers", "2", "--poll-interval", str(POLL_S), "--no-access-log")
    with ServerProcess("fol@canary", followed, *args) as proc, Store(followed, create=False) as store:
        proc.wait_ready()
        with Load(proc.url, clients=4) as load:
            wait_until(proc, lambda: min(load.counts()) >= 5, "answers from every client")
            store.promote("fol", 2, "canary")

            def both_switched() -> bool:  # a new connection per request reaches either worker
                versions = {httpx.post(proc.url + "/v2/models/fol/infer", json=BODY).json()["model_version"]
                            for _ in range(20)}  # fmt: skip
                return versions == {"2"}

            wait_until(proc, both_switched, "every worker on 2")
            assert proc.output().count("fol@canary moved: switched from fol@1 to fol@2") == 2
        assert all(a.status == 200 for answers in load.answers for a in answers)
        assert proc.terminate() == 0, proc.output()[-2000:]


@pytest.mark.slow
@pytest.mark.postgres
def test_a_team_store_is_served_and_followed_by_every_worker(tmp_path: Path):
    """`kiln serve NAME@ALIAS --store postgresql://... --blobs DIR --workers 2`: pinned in the parent, each worker
    opens the database itself (blobs from --blobs, which the workers inherit) and follows a promotion."""
    from store import postgres  # tests/store/postgres.py: a throwaway PostgreSQL 15 cluster

    if not postgres.available():
        pytest.skip(f"no PostgreSQL 15 server binaries in {postgres.BIN}")
    cluster = postgres.Cluster()
    try:
        url, blobs = cluster.url(cluster.create_database()), tmp_path / "blobs"
        with Store(url, blobs=blobs) as store:
            for value in (1.0, 2.0):
                register_module(constant(value), "fol", store=store, example_input=torch.zeros(2, 4), onnx=False)
            store.promote("fol", 1, "production")
        args = ("--blobs", str(blobs), "--workers", "2", "--poll-interval", str(POLL_S), "--no-access-log")
        with ServerProcess("fol@production", url, *args) as proc:
            proc.wait_ready()
            assert served_version(proc.url) == "1"
            with Store(url, blobs=blobs) as store:
                store.promote("fol", 2, "production")
            wait_until(proc, lambda: proc.output().count("switched from fol@1 to fol@2") == 2, "both workers on 2")
            assert {served_version(proc.url) for _ in range(10)} == {"2"}
            assert proc.terminate() == 0, proc.output()[-2000:]
    finally:
        cluster.close()
