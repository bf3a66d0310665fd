"""The PostgreSQL team store as a server meets it: restarts, credentials, masked passwords, and bad input."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.errors import StoreError
from kiln.store import Store
from kiln.store.database import DatabaseUnavailable

from . import postgres
from .conftest import Backend

BACKENDS = ("postgresql",)


def test_a_run_logging_through_a_server_restart_loses_nothing(backend: Backend) -> None:
    store = backend.open()
    run = store.start_run("through-a-restart", flush_rows=20, flush_seconds=1e9)
    logged = threading.Event()
    steps = 2000

    def log() -> None:
        for step in range(steps):
            run.log({"loss": step / steps}, step=step)
            if step == 200:
                logged.set()

    writer = threading.Thread(target=log)
    writer.start()
    assert logged.wait(60)
    assert backend.cluster is not None
    backend.cluster.restart()  # every connection is cut while the run writes
    writer.join(120)
    assert not writer.is_alive()
    run.finish()
    assert [s for s, _ in store.metrics(run.id)["loss"]] == list(range(steps))
    assert store.run(run.id).status == "finished"


def test_metrics_stay_buffered_while_the_server_is_down(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    store = backend.open()
    store.database.reconnect_seconds = 1.0  # give up on a write after a second (default: a minute)
    run = store.start_run("buffered", flush_rows=10, flush_seconds=1e9)
    run.log_rows([("loss", step, 0.5, None) for step in range(10)])  # written
    assert backend.cluster is not None
    backend.cluster.stop()
    try:
        with caplog.at_level(logging.WARNING, logger="kiln.store.runs"):
            run.log_rows([("loss", step, 0.5, None) for step in range(10, 25)])  # due: the write fails, rows stay
        assert "25 metric row(s) kept in memory" not in caplog.text and "15 metric row(s) kept" in caplog.text
        assert postgres.PASSWORD not in caplog.text
        with pytest.raises(DatabaseUnavailable, match="stopped answering") as caught:
            run.flush()
        assert postgres.PASSWORD not in str(caught.value) and "***" in str(caught.value)
    finally:
        backend.cluster.start()
    run.finish()
    assert [s for s, _ in store.metrics(run.id)["loss"]] == list(range(25))


def test_credentials_come_from_pg_variables_and_pgpass(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert backend.cluster is not None
    database = backend.reference.rsplit("/", 1)[1]
    without = backend.cluster.url(database, password=None)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "missing"))
    with pytest.raises(StoreError, match=r"refused the credentials .* PGPASSWORD or ~/\.pgpass"):
        Store(without, blobs=backend.blobs)
    monkeypatch.setenv("PGPASSWORD", postgres.PASSWORD)
    Store(without, blobs=backend.blobs).close()
    monkeypatch.delenv("PGPASSWORD")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{backend.cluster.port}:*:{postgres.USER}:{postgres.PASSWORD}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    Store(without, blobs=backend.blobs).close()
    for name, value in {"PGHOST": "127.0.0.1", "PGPORT": str(backend.cluster.port), "PGUSER": postgres.USER,
                        "PGDATABASE": database}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    with Store("postgresql://", blobs=backend.blobs) as store:  # everything from the environment, as psql does
        assert store.runs() == []


def test_the_password_never_shows(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = backend.open()
    assert postgres.PASSWORD in backend.reference
    for shown in (repr(store), str(store), store.url, store.database.where):
        assert postgres.PASSWORD not in shown and "kiln:***@127.0.0.1" in shown
    monkeypatch.setenv("KILN_STORE", backend.reference)
    monkeypatch.setenv("KILN_BLOBS", backend.blobs or "")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert postgres.PASSWORD not in out and "store postgresql+psycopg://kiln:***@127.0.0.1:" in out
    assert f"(blobs {backend.blobs})" in out


def _bad(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert postgres.PASSWORD not in captured.err and "wrong-pw" not in captured.err
    return captured.err


def test_bad_input_is_one_line_saying_what_to_do(
    backend: Backend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert backend.cluster is not None
    port, blobs = backend.cluster.port, tmp_path / "never-created"
    database = backend.reference.rsplit("/", 1)[1]
    cases = {
        f"postgresql://kiln:{postgres.PASSWORD}@127.0.0.1:port/{database}": "malformed store URL postgresql://",
        f"postgresql://kiln:{postgres.PASSWORD}@127.0.0.1:{postgres.free_port()}/{database}": "cannot reach the "
        r"store's database at postgresql\+psycopg://kiln:\*\*\*@127\.0\.0\.1",
        f"postgresql://kiln:wrong-pw@127.0.0.1:{port}/{database}": "refused the credentials",
        f"postgresql://kiln:{postgres.PASSWORD}@127.0.0.1:{port}/no_such_db": "does not exist.*createdb",
        "mysql://kiln@127.0.0.1/kiln": "scheme 'mysql' is not one kiln knows",
    }
    for url, message in cases.items():
        for verb in (["models", "list"], ["runs", "list"], ["store", "gc"], ["store", "migrate"]):
            err = _bad([*verb, "--store", url, "--blobs", str(blobs)], capsys)
            assert err.startswith("kiln: error: ") and re.search(message, err), (verb, err)
    assert not blobs.exists()  # nothing was written anywhere
    with Store(backend.reference, blobs=backend.blobs) as store:
        assert store.runs() == [] and store.models() == []
