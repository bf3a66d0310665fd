"""The store as kiln 0.1 left it (its schema version 2): runs, metrics, artifacts, models, versions, aliases.

A fresh database gets every table. A store kiln 0.1 wrote (it has ``kiln_schema``) is adopted as it is: at schema
version 1 its runs first learn ``process`` and ``heartbeat`` (a running run's last sign of life is its last metric),
as kiln 0.1 itself upgraded them. Either way ``kiln_schema`` ends at 3, which kiln 0.1 refuses to open.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_kiln_schema = sa.table("kiln_schema", sa.column("id", sa.Integer), sa.column("version", sa.Integer))
_runs = sa.table(
    "runs", sa.column("id"), sa.column("status"), sa.column("start_time"), sa.column("heartbeat", sa.Float)
)
_metrics = sa.table("metrics", sa.column("run_id"), sa.column("time", sa.Float))


def _create_tables() -> None:
    op.create_table(
        "kiln_schema",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, index=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("system", sa.JSON, nullable=False),
        sa.Column("start_time", sa.Float, nullable=False, index=True),
        sa.Column("end_time", sa.Float),
        sa.Column("process", sa.JSON),
        sa.Column("heartbeat", sa.Float),
    )
    op.create_table(
        "metrics",
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("epoch", sa.Integer),
        sa.Column("value", sa.Float),
        sa.Column("time", sa.Float, nullable=False),
        sa.Index("ix_metrics_run_key_step", "run_id", "key", "step"),
    )
    op.create_table(
        "run_artifacts",
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False, index=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("created", sa.Float, nullable=False),
    )
    op.create_table(
        "versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
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
    op.create_table(
        "version_files",
        sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False, index=True),
        sa.Column("size", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "aliases",
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), primary_key=True),
        sa.Column("alias", sa.String(32), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
    )
    op.create_table(
        "alias_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False, index=True),
        sa.Column("alias", sa.String(32), nullable=False),
        sa.Column("old_version", sa.Integer),
        sa.Column("new_version", sa.Integer),
        sa.Column("time", sa.Float, nullable=False),
    )


def _legacy_1_to_2() -> None:
    """kiln 0.1's own upgrade to its schema 2: who logs a run and when it last wrote."""
    op.add_column("runs", sa.Column("process", sa.JSON))
    op.add_column("runs", sa.Column("heartbeat", sa.Float))
    last_metric = sa.select(sa.func.max(_metrics.c.time)).where(_metrics.c.run_id == _runs.c.id).scalar_subquery()
    op.execute(
        _runs.update()
        .where(_runs.c.status == "running")
        .values(heartbeat=sa.func.coalesce(last_metric, _runs.c.start_time))
    )


def upgrade() -> None:
    connection = op.get_bind()
    if not sa.inspect(connection).has_table("kiln_schema"):
        _create_tables()
        op.bulk_insert(_kiln_schema, [{"id": 1, "version": 3}])
        return
    found = connection.execute(sa.select(_kiln_schema.c.version).where(_kiln_schema.c.id == 1)).scalar()
    if found not in (1, 2):
        raise RuntimeError(f"kiln_schema holds version {found!r}, which no kiln wrote without Alembic")
    if found == 1:
        _legacy_1_to_2()
    op.execute(_kiln_schema.update().where(_kiln_schema.c.id == 1).values(version=3))


def downgrade() -> None:
    raise NotImplementedError("kiln stores are not downgraded: copy the store with an older kiln instead")
