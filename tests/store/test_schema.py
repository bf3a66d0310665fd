"""Opening stores: schema creation and upgrades happen once, newer stores are refused, torch is never imported."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kiln.errors import StoreError
from kiln.store import Store, default_path, schema


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

    monkeypatch.setattr(schema, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(schema.UPGRADES, 2, add_column)
    Store(tmp_path / "s").close()
    Store(tmp_path / "s").close()
    assert calls == [1]
    with sqlite3.connect(tmp_path / "s" / "kiln.db") as connection:
        assert connection.execute("SELECT version FROM kiln_schema").fetchone()[0] == 2
        assert "owner" in [row[1] for row in connection.execute("PRAGMA table_info(models)")]


def test_default_path_follows_kiln_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home"
    assert Store().path == tmp_path / "home"
    monkeypatch.delenv("KILN_HOME")
    monkeypatch.chdir(tmp_path)
    assert Store().path == tmp_path / ".kiln"
