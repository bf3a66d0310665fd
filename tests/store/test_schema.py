"""Opening stores: SQLite's settings, where the default store is, and torch is never imported."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kiln.store import Store, default_path


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


def test_default_path_follows_kiln_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home"
    assert Store().path == tmp_path / "home"
    monkeypatch.delenv("KILN_HOME")
    monkeypatch.chdir(tmp_path)
    assert Store().path == tmp_path / ".kiln"


def test_kiln_store_names_the_default_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KILN_STORE", str(tmp_path / "team"))
    assert Store().path == tmp_path / "team"
    monkeypatch.setenv("KILN_BLOBS", str(tmp_path / "shared"))  # for database stores only: this one keeps its own
    assert Store().blobs.root == tmp_path / "team" / "blobs" / "sha256"
