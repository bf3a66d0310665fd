"""Opening stores: schema creation and upgrades happen once, newer stores are refused, torch is never imported."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

import pytest

from kiln.errors import StoreError
from kiln.store import Store, default_path, schema

from .conftest import start_together


def test_import_does_not_pull_in_torch(run_python) -> None:
    done = run_python("import sys, kiln.store, kiln.store.tables; print('torch' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_sqlite_is_configured_for_many_processes(store: Store) -> None:
    with sqlite3.connect(store.path / "kiln.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with store.database.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_publish_transactions_are_durable(store: Store) -> None:
    seen = store.database.write(lambda c: c.exec_driver_sql("PRAGMA synchronous").scalar(), durable=True)
    normal = store.database.write(lambda c: c.exec_driver_sql("PRAGMA synchronous").scalar())
    assert (seen, normal) == (2, 1)  # FULL for publishes, NORMAL for metrics


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "s").close()
    with sqlite3.connect(tmp_path / "s" / "kiln.db") as connection:
        connection.execute("UPDATE kiln_schema SET version = 99")
    with pytest.raises(StoreError, match="schema version 99, newer than this kiln"):
        Store(tmp_path / "s")


def test_upgrade_runs_once_and_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Store(tmp_path / "s").close()
    calls = []

    def add_column(connection) -> None:
        calls.append(1)
        connection.exec_driver_sql("ALTER TABLE models ADD COLUMN owner VARCHAR(64)")

    following = schema.SCHEMA_VERSION + 1
    monkeypatch.setattr(schema, "SCHEMA_VERSION", following)
    monkeypatch.setitem(schema.UPGRADES, following, add_column)
    Store(tmp_path / "s").close()
    Store(tmp_path / "s").close()
    assert calls == [1]
    with sqlite3.connect(tmp_path / "s" / "kiln.db") as connection:
        assert connection.execute("SELECT version FROM kiln_schema").fetchone()[0] == following
        assert "owner" in [row[1] for row in connection.execute("PRAGMA table_info(models)")]


def test_default_path_follows_kiln_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home"
    assert Store().path == tmp_path / "home"
    monkeypatch.delenv("KILN_HOME")
    monkeypatch.chdir(tmp_path)
    assert Store().path == tmp_path / ".kiln"


# Each opener says "ready", waits for "go" (so all open at once, no sleeps), opens the store and prints its version.
OPENER = """
import sys
from kiln.store import Store, schema
print("ready", flush=True)
sys.stdin.readline()
store = Store(sys.argv[1], create=False)
print(store.database.read(schema.schema_version), flush=True)
"""


def _as_version_1(root: Path) -> None:
    """Turn a store into what kiln wrote at schema version 1 (runs had no process nor heartbeat)."""
    with sqlite3.connect(root / "kiln.db") as connection:
        connection.execute("ALTER TABLE runs DROP COLUMN process")
        connection.execute("ALTER TABLE runs DROP COLUMN heartbeat")
        connection.execute("UPDATE kiln_schema SET version = 1")


def test_version_1_store_is_upgraded_once_by_racing_openers(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with Store(root) as store:
        running = store.start_run("old-running")
        running.log({"loss": 0.5}, step=1)
        running.flush()
        finished = store.start_run("old-finished")
        finished.finish()
        logged_at = store.database.read(
            lambda c: c.exec_driver_sql("SELECT max(time) FROM metrics WHERE run_id = ?", (running.id,)).scalar()
        )
    _as_version_1(root)

    done = start_together([[sys.executable, "-c", OPENER, str(root)] for _ in range(4)], timeout=120)
    # A second ALTER TABLE would fail ("duplicate column name"): every opener succeeds and sees version 2.
    assert [(code, out.strip()) for code, out, _ in done] == [(0, "2")] * 4, [err for _, _, err in done]

    with sqlite3.connect(root / "kiln.db") as connection:
        rows = dict(connection.execute("SELECT name, heartbeat FROM runs").fetchall())
        columns = [row[1] for row in connection.execute("PRAGMA table_info(runs)")]
    assert columns.count("process") == 1 and columns.count("heartbeat") == 1
    # A running run's last sign of life is its last metric; a finished run needs none.
    assert rows == {"old-running": logged_at, "old-finished": None}
    with Store(root) as store:
        # A run from before version 2 has no process record: it is judged by its heartbeat only, never killed.
        assert store.run(running.id).status == "running"
        age = time.time() - logged_at
        assert store.run(running.id, stale_after=age / 2).status == "stale"
        assert store.run(finished.id).status == "finished"
