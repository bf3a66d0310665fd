"""Schema migrations (Alembic): kiln 0.1 stores upgrade with nothing lost, newer ones are refused, PostgreSQL stores
upgrade only through ``kiln store migrate``, and the revisions build exactly the tables the code uses."""

from __future__ import annotations

import math
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from kiln.cli import main
from kiln.errors import StoreError
from kiln.store import Store
from kiln.store.migrate import HEAD, VERSION_TABLE, schema_state
from kiln.store.schema import metadata, metrics
from kiln.store.series import SeriesCache, downsample

from .conftest import Backend, start_together
from .test_series import _expected_rollups, _stored_rollups

BACKENDS = ("sqlite", "postgresql")
FIXTURE = Path(__file__).parent / "fixtures" / "store-v2"  # written by kiln 0.1 (make_store_v2.py)
TABLES = ("runs", "metrics", "run_artifacts", "models", "versions", "version_files", "aliases", "alias_history")


def _fixture_copy(tmp_path: Path) -> Path:
    root = tmp_path / "old-store"
    shutil.copytree(FIXTURE, root)
    (root / "tmp").mkdir(exist_ok=True)
    return root


def _dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(path) as connection:
        return {t: sorted(connection.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in TABLES}


def test_a_kiln_0_1_store_opens_upgraded_with_nothing_lost(tmp_path: Path) -> None:
    root = _fixture_copy(tmp_path)
    before = _dump(root / "kiln.db")
    assert sum(len(rows) for rows in before.values()) > 20
    with Store(root, create=False) as store:
        assert store.database.read(schema_state).revision == HEAD
        runs = {r.name: r for r in store.runs(stale_after=1e12)}  # "remote" was logged on another machine, long ago
        assert {n: r.status for n, r in runs.items()} == {"digits-mlp": "finished", "digits-cnn": "failed",
                                                          "remote": "running"}  # fmt: skip
        mlp = store.run(runs["digits-mlp"].id)
        assert mlp.params == {"lr": 0.001, "layers": [64, 10]} and mlp.tags == {"team": "vision"}
        assert mlp.artifacts["plot.png"].size == 24
        assert math.isnan(dict(store.metrics(mlp.id, "val_loss")["val_loss"])[3])
        assert [v.version for v in store.versions("digits")] == [1, 2]
        assert store.version("digits@production").version == 2 and store.version("digits@1").run_id == mlp.id
        assert store.version("tuned").parent == "base@1"
        assert [(m.alias, m.old_version, m.new_version) for m in store.alias_history("digits")] == [
            ("production", None, 1), ("production", 1, 2), ("staging", None, 3), ("staging", 3, None)]  # fmt: skip
        assert store.verify().ok and store.verify().artifacts == 1
        (tmp_path / "w.bin").write_bytes(b"new weights")
        assert store.register("digits", {"w.bin": tmp_path / "w.bin"}).version == 4  # 3 stays a tombstone
        assert _stored_rollups(store) == _expected_rollups(store) != {}  # revision 0002 computed them
    after = _dump(root / "kiln.db")
    for table in TABLES:  # every row kiln 0.1 wrote is still there, unchanged
        assert set(before[table]) <= set(after[table]), table
    with sqlite3.connect(root / "kiln.db") as connection:  # kiln 0.1 now refuses it: "schema version 3, newer"
        assert connection.execute("SELECT version FROM kiln_schema").fetchone()[0] == 3


# Each opener says "ready", waits for "go" (so all open at once, no sleeps), opens the store and prints its revision.
OPENER = """
import sys
from kiln.store import Store
from kiln.store.migrate import schema_state
print("ready", flush=True)
sys.stdin.readline()
store = Store(sys.argv[1], create=False)
print(store.database.read(schema_state).revision, flush=True)
"""


def test_a_schema_1_store_is_upgraded_once_by_racing_openers(tmp_path: Path) -> None:
    root = _fixture_copy(tmp_path)
    with sqlite3.connect(root / "kiln.db") as connection:  # what kiln 0.1 wrote at its schema version 1
        connection.execute("ALTER TABLE runs DROP COLUMN process")
        connection.execute("ALTER TABLE runs DROP COLUMN heartbeat")
        connection.execute("UPDATE kiln_schema SET version = 1")
        last_metric = dict(connection.execute("SELECT run_id, max(time) FROM metrics GROUP BY run_id").fetchall())

    done = start_together([[sys.executable, "-c", OPENER, str(root)] for _ in range(4)], timeout=120)
    # A second ALTER TABLE would fail ("duplicate column name"): every opener succeeds and sees the head revision.
    assert [(code, out.strip()) for code, out, _ in done] == [(0, HEAD)] * 4, [err for _, _, err in done]
    with sqlite3.connect(root / "kiln.db") as connection:
        rows = {name: (run_id, heartbeat) for run_id, name, heartbeat in
                connection.execute("SELECT id, name, heartbeat FROM runs")}  # fmt: skip
    # A running run's last sign of life is its last metric (else its start); finished runs need none.
    remote_id, remote_heartbeat = rows["remote"]
    assert remote_heartbeat == last_metric.get(remote_id, remote_heartbeat) and remote_heartbeat is not None
    assert rows["digits-mlp"][1] is None and rows["digits-cnn"][1] is None
    with Store(root) as store:
        # No process record: judged by its heartbeat only, which is as old as the fixture.
        assert store.run(remote_id, stale_after=1e12).status == "running"
        assert store.run(remote_id, stale_after=1).status == "stale"


def _set_revision(store: Store, revision: str | None, legacy: int) -> None:
    table = sa.table(VERSION_TABLE, sa.column("version_num", sa.String))

    def write(connection: sa.engine.Connection) -> None:
        if revision is None or revision < "0002":  # as revision 0001 left it: no rollups, 32-bit steps on PostgreSQL
            connection.execute(sa.text("DROP TABLE metric_rollups"))
            if connection.dialect.name == "postgresql":
                connection.execute(sa.text("ALTER TABLE metrics ALTER COLUMN step TYPE INTEGER"))
        connection.execute(table.delete())
        if revision is not None:
            connection.execute(table.insert().values(version_num=revision))
        connection.execute(sa.text("UPDATE kiln_schema SET version = :v").bindparams(v=legacy))

    store.database.write(write)


def test_a_newer_store_is_refused(backend: Backend) -> None:
    _set_revision(backend.open(), "9999", 3)
    with pytest.raises(StoreError, match=rf"revision 9999, newer than this kiln knows \({HEAD}\); upgrade kiln"):
        backend.open()


def test_revisions_build_exactly_the_tables_of_schema_py(backend: Backend) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from kiln.store.migrate import _alembic

    assert _alembic()[1].get_current_head() == HEAD
    store = backend.open()
    with store.database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, metadata) == []


def test_racing_first_openers_create_the_schema_once(backend: Backend, tmp_path: Path) -> None:
    fresh = backend.empty(tmp_path)
    code = OPENER.replace("create=False", "create=True")
    done = start_together([[sys.executable, "-c", code, fresh.reference] for _ in range(4)], timeout=120,
                          env=fresh.env())  # fmt: skip
    assert [(code, out.strip()) for code, out, _ in done] == [(0, HEAD)] * 4, [err for _, _, err in done]


@pytest.mark.backends("postgresql")  # the embedded store creates and upgrades itself; this is the team store's rule
def test_a_database_without_the_schema_asks_for_kiln_store_migrate(
    backend: Backend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = backend.empty(tmp_path)
    with pytest.raises(StoreError, match=r"has no kiln store .* 'kiln store migrate --store URL'"):
        backend.open(create=False)
    assert main(["models", "list", *backend.args()]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kiln store migrate" in err and "s3cret" not in err
    assert main(["store", "migrate", *backend.args()]) == 0
    assert capsys.readouterr().out.strip().endswith(f": no kiln tables -> revision {HEAD}")
    assert main(["models", "list", *backend.args()]) == 0
    assert main(["store", "migrate", *backend.args()]) == 0
    assert capsys.readouterr().out.strip().endswith(f"already at revision {HEAD}")


@pytest.mark.backends("postgresql")
def test_an_older_team_store_is_upgraded_only_by_kiln_store_migrate(
    backend: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    store = backend.open()
    store.start_run("kept").finish()
    _set_revision(store, None, 2)  # as kiln 0.1 would have left it (before Alembic)
    with pytest.raises(StoreError, match=r"older than this kiln's .* 'kiln store migrate --store URL'"):
        backend.open()
    assert main(["store", "migrate", *backend.args()]) == 0
    assert f"kiln 0.1's schema version 2 -> revision {HEAD}" in capsys.readouterr().out
    assert [r.name for r in backend.open().runs()] == ["kept"]


def _step_type(store: Store) -> str:
    columns = store.database.read(lambda c: sa.inspect(c).get_columns("metrics"))
    return str(next(c["type"] for c in columns if c["name"] == "step"))


def test_a_revision_0001_store_upgrades_with_its_metrics_rolled_up(
    backend: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    """Revision 0002: 64-bit steps on PostgreSQL, and rollups computed for the metrics already stored."""
    store = backend.open()
    with store.start_run("before-0002", flush_rows=1_000) as run:
        run.log_rows(("loss", s, math.nan if s == 4_321 else math.sin(s / 100), None) for s in range(6_000))
        run.log_rows(("loss", s, 99.0, None) for s in range(5_000, 5_010))  # re-logged steps
        run.log({"val_loss": 0.5}, step=6_000)
    before = store.database.read(lambda c: sorted(map(tuple, c.execute(sa.select(metrics))), key=repr))
    _set_revision(store, "0001", 3)
    if backend.name == "postgresql":  # a team store upgrades only when asked
        assert _step_type(store) == "INTEGER"
        with pytest.raises(StoreError, match="kiln store migrate"):
            backend.open()
        assert main(["store", "migrate", *backend.args()]) == 0
        assert capsys.readouterr().out.strip().endswith(f"revision 0001 -> revision {HEAD}")
    upgraded = backend.open()
    assert upgraded.database.read(schema_state).revision == HEAD
    after = upgraded.database.read(lambda c: sorted(map(tuple, c.execute(sa.select(metrics))), key=repr))
    assert after == before  # nothing lost, nothing changed
    assert _step_type(upgraded) == ("BIGINT" if backend.name == "postgresql" else "INTEGER")  # SQLite's is 64-bit
    assert _stored_rollups(upgraded) == _expected_rollups(upgraded) != {}
    rows = upgraded.database.read(lambda c: [tuple(r) for r in c.execute(
        sa.select(metrics.c.step, metrics.c.time, metrics.c.value).where(metrics.c.key == "loss"))])  # fmt: skip
    series = SeriesCache(upgraded, max_points=100).series(run.id, "loss")
    assert series == downsample("loss", rows, max_points=100) and 4_321 in series.nonfinite
    with upgraded.start_run("after-0002") as later:  # steps past 2**31 now fit on PostgreSQL too
        later.log({"loss": 1.0}, step=2**40)
    assert upgraded.metrics(later.id)["loss"] == [(2**40, 1.0)]
