"""Tables of the store and their versioned migrations.

The schema version lives in the ``kiln_schema`` table. Opening a store reads it without a lock; only when it is
behind does the opener take the write lock, read it again and migrate, so any number of processes can open a
store at once and exactly one of them creates or upgrades it.

Versions: 1, the first; 2 adds ``runs.process`` (who runs it: host, machine key, pid, process start time) and
``runs.heartbeat`` (last sign of life), so a run whose process died without finishing it can be told apart.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import StoreError
from .database import Database

__all__ = [
    "SCHEMA_VERSION",
    "UPGRADES",
    "alias_history",
    "aliases",
    "metadata",
    "metrics",
    "migrate",
    "models",
    "run_artifacts",
    "runs",
    "schema_version",
    "version_files",
    "versions",
]

SCHEMA_VERSION = 2

metadata = sa.MetaData()

kiln_schema = sa.Table(
    "kiln_schema",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("system", sa.JSON, nullable=False),
    sa.Column("start_time", sa.Float, nullable=False, index=True),
    sa.Column("end_time", sa.Float),
    sa.Column("process", sa.JSON),  # {"host", "machine", "pid", "started"} of the process logging it; v2
    sa.Column("heartbeat", sa.Float),  # time of its last write (start, metric flush, finish); v2
)

metrics = sa.Table(
    "metrics",
    metadata,
    sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("key", sa.String(200), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("epoch", sa.Integer),
    sa.Column("value", sa.Float),  # NULL stands for NaN (SQLite cannot store NaN)
    sa.Column("time", sa.Float, nullable=False),
    sa.Index("ix_metrics_run_key_step", "run_id", "key", "step"),
)

run_artifacts = sa.Table(
    "run_artifacts",
    metadata,
    sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)

models = sa.Table(
    "models",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("created", sa.Float, nullable=False),
)

versions = sa.Table(
    "versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # "ready" or "deleted" (kept so numbers are never reused)
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("deleted", sa.Float),
    sa.Column("description", sa.Text),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("signature", sa.JSON),
    sa.Column("run_id", sa.String(32), index=True),
    sa.Column("data_fingerprint", sa.String(128)),
    sa.Column("parent", sa.String(80)),
    sa.UniqueConstraint("model_id", "version", name="uq_versions_model_version"),
)

version_files = sa.Table(
    "version_files",
    metadata,
    sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("size", sa.BigInteger, nullable=False),
)

aliases = sa.Table(
    "aliases",
    metadata,
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), primary_key=True),
    sa.Column("alias", sa.String(32), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
)

alias_history = sa.Table(
    "alias_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False, index=True),
    sa.Column("alias", sa.String(32), nullable=False),
    sa.Column("old_version", sa.Integer),  # None: the alias was created
    sa.Column("new_version", sa.Integer),  # None: the alias was removed
    sa.Column("time", sa.Float, nullable=False),
)


def _add_column(connection: Connection, column: sa.Column) -> None:
    kind = column.type.compile(dialect=connection.dialect)
    connection.exec_driver_sql(f"ALTER TABLE {column.table.name} ADD COLUMN {column.name} {kind}")


def _upgrade_to_2(connection: Connection) -> None:
    """Runs learn who logs them and when they last did; a running run's last sign of life is its last metric."""
    _add_column(connection, runs.c.process)
    _add_column(connection, runs.c.heartbeat)
    last_metric = sa.select(sa.func.max(metrics.c.time)).where(metrics.c.run_id == runs.c.id).scalar_subquery()
    connection.execute(
        runs.update()
        .where(runs.c.status == "running")
        .values(heartbeat=sa.func.coalesce(last_metric, runs.c.start_time))
    )


# UPGRADES[n] turns a version n-1 store into a version n store (a fresh store is created at SCHEMA_VERSION).
UPGRADES: dict[int, Callable[[Connection], None]] = {2: _upgrade_to_2}


def schema_version(connection: Connection) -> int:
    """The schema version recorded in the database (0 for an empty database)."""
    if not sa.inspect(connection).has_table("kiln_schema"):
        return 0
    value = connection.execute(sa.select(kiln_schema.c.version).where(kiln_schema.c.id == 1)).scalar()
    return int(value or 0)


def _check_not_newer(found: int, where: str) -> None:
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"the store at {where} has schema version {found}, newer than this kiln understands ({SCHEMA_VERSION}). "
            "Upgrade kiln (pip install -U kiln) to open it."
        )


def _migrate_locked(connection: Connection, where: str) -> None:
    found = schema_version(connection)  # read again under the write lock: another process may have migrated
    _check_not_newer(found, where)
    if found == SCHEMA_VERSION:
        return
    if found == 0:
        metadata.create_all(connection)
        connection.execute(kiln_schema.insert().values(id=1, version=SCHEMA_VERSION))
        return
    for target in range(found + 1, SCHEMA_VERSION + 1):
        UPGRADES[target](connection)
    connection.execute(kiln_schema.update().where(kiln_schema.c.id == 1).values(version=SCHEMA_VERSION))


def migrate(database: Database, *, where: str) -> None:
    """Bring the database to SCHEMA_VERSION; cheap (one read) when it already is."""
    found = database.read(schema_version)
    _check_not_newer(found, where)
    if found != SCHEMA_VERSION:
        database.write(lambda connection: _migrate_locked(connection, where), durable=True)
