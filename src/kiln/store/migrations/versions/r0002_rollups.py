"""64-bit metric steps on PostgreSQL, and metric rollups: a million-step chart reads a thousand rows, not a million.

``metrics.step`` becomes BIGINT on PostgreSQL (a run may log more than 2**31 steps); SQLite's INTEGER is 64-bit
already, so there the column stays as it is. ``metric_rollups`` holds per (run, metric, level, bucket) summaries of
the metric rows (see :mod:`kiln.store.rollups`); this revision computes them for every metric already stored, one
run at a time (a few seconds per million rows), after which every metric write keeps them up to date.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kiln.store.rollups import rebuild_rollups

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_STEP = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name == "postgresql":
        op.alter_column("metrics", "step", type_=sa.BigInteger, existing_type=sa.Integer, existing_nullable=False)
    op.create_table(
        "metric_rollups",
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("level", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("bucket", _STEP, primary_key=True, autoincrement=False),
        sa.Column("total", sa.BigInteger, nullable=False),
        sa.Column("low", sa.Float),
        sa.Column("low_step", _STEP),
        sa.Column("low_time", sa.Float),
        sa.Column("high", sa.Float),
        sa.Column("high_step", _STEP),
        sa.Column("high_time", sa.Float),
        sa.Column("nan_step", _STEP),
        sa.Column("nan_time", sa.Float),
        sqlite_with_rowid=False,
    )
    rebuild_rollups(connection)


def downgrade() -> None:
    raise NotImplementedError("kiln stores are not downgraded: copy the store with an older kiln instead")
