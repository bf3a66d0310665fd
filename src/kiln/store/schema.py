"""The store's tables: one SQLAlchemy Core definition for SQLite and PostgreSQL alike.

Changing a table means a new Alembic revision in ``migrations/versions/`` (see :mod:`kiln.store.migrate`); a test
checks that the revisions build exactly these tables on both databases.

``kiln_schema`` is what kiln 0.1 versioned its schema with (1: the first; 2: ``runs.process`` and
``runs.heartbeat``). Alembic took over at revision 0001, which is schema 2; the table stays, holding
:data:`LEGACY_SENTINEL`, so that a kiln 0.1 refuses a store migrated by Alembic ("newer than this kiln") instead of
writing to tables it no longer knows.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "LEGACY_SENTINEL",
    "STEP",
    "alias_history",
    "aliases",
    "kiln_schema",
    "metadata",
    "metric_rollups",
    "metrics",
    "models",
    "run_artifacts",
    "runs",
    "version_files",
    "versions",
]

LEGACY_SENTINEL = 3  # kiln_schema.version of every store Alembic manages: above what kiln 0.1 opens (2)

metadata = sa.MetaData()

# A step is a 64-bit integer: BIGINT on PostgreSQL (since revision 0002; a run may log more than 2**31 steps), and
# SQLite's INTEGER, which is 64-bit already (declaring BIGINT there would change nothing but the table's text).
STEP = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

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
    sa.Column("step", STEP, nullable=False),
    sa.Column("epoch", sa.Integer),
    sa.Column("value", sa.Float),  # NULL stands for NaN (SQLite cannot store NaN)
    sa.Column("time", sa.Float, nullable=False),
    sa.Index("ix_metrics_run_key_step", "run_id", "key", "step"),
)

# Per (run, metric, level, bucket): a summary of the metric rows whose step >> level == bucket, kept by every
# metric write (kiln.store.rollups), so a chart of a million steps reads a thousand rows instead (revision 0002).
# Of its finite values the least and the greatest, each with its step and time (ties: the earliest step, then time);
# its first non-finite value's step and time; and how many rows it holds.
metric_rollups = sa.Table(
    "metric_rollups",
    metadata,
    sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("level", sa.SmallInteger, primary_key=True, autoincrement=False),  # the bucket holds 2**level steps
    sa.Column("bucket", STEP, primary_key=True, autoincrement=False),
    sa.Column("total", sa.BigInteger, nullable=False),
    sa.Column("low", sa.Float),
    sa.Column("low_step", STEP),
    sa.Column("low_time", sa.Float),
    sa.Column("high", sa.Float),
    sa.Column("high_step", STEP),
    sa.Column("high_time", sa.Float),
    sa.Column("nan_step", STEP),  # NaN or infinite
    sa.Column("nan_time", sa.Float),
    sqlite_with_rowid=False,  # the rows live in the primary key's B-tree: one tree to update per write, not two
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
