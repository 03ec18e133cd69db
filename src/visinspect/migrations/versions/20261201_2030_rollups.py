"""rollups

Per-hour and per-day counts of the predictions (per model and top-1 class) and per-hour counts
of their confidences, kept by a trigger on `predictions` in the inserting transaction
(`db/rollups.py`): statistics and drift read them instead of the rows. The rows already there are
counted once, in this migration's transaction.

Revision ID: 8c2a5e7d1f43
Revises: 6e1d3b9f2a57
Create Date: 2026-12-01 20:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from visinspect.db.rollups import backfill_statements, drop_trigger_statements, trigger_statements

revision: str = "8c2a5e7d1f43"
down_revision: str | Sequence[str] | None = "6e1d3b9f2a57"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# New tables and a trigger: the release before serves on, and the rows it inserts are counted.
phase = "expand"

_UTC_TIME = sa.DateTime(timezone=True)


def _model_keys() -> list[sa.Column[str]]:
    return [
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("backend", sa.String(length=32), nullable=False),
        sa.Column("precision", sa.String(length=8), nullable=False),
    ]


def _class_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("class_name", sa.String(length=128), nullable=False),
        sa.Column("class_id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("confidence_sum", sa.Double(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "rollup_hourly_classes",
        sa.Column("hour", _UTC_TIME, nullable=False),
        *_model_keys(),
        *_class_columns(),
        sa.PrimaryKeyConstraint(
            "hour", "model_version", "backend", "precision", "class_name",
            name=op.f("pk_rollup_hourly_classes"),
        ),
    )  # fmt: skip
    op.create_index(
        "ix_rollup_hourly_classes_class_name_hour", "rollup_hourly_classes", ["class_name", "hour"]
    )
    op.create_table(
        "rollup_daily_classes",
        sa.Column("day", sa.Date(), nullable=False),
        *_model_keys(),
        *_class_columns(),
        sa.PrimaryKeyConstraint(
            "day", "model_version", "backend", "precision", "class_name",
            name=op.f("pk_rollup_daily_classes"),
        ),
    )  # fmt: skip
    op.create_index(
        "ix_rollup_daily_classes_class_name_day", "rollup_daily_classes", ["class_name", "day"]
    )
    op.create_table(
        "rollup_hourly_confidences",
        sa.Column("hour", _UTC_TIME, nullable=False),
        *_model_keys(),
        sa.Column("bucket", sa.SmallInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "hour", "model_version", "backend", "precision", "bucket",
            name=op.f("pk_rollup_hourly_confidences"),
        ),
    )  # fmt: skip
    dialect = op.get_context().dialect.name
    # Counted and then kept counting in one transaction: no row in between is missed (PostgreSQL
    # runs migrations in a transaction; SQLite's DDL is transactional too).
    for statement in trigger_statements(dialect) + backfill_statements(dialect):
        op.execute(statement)


def downgrade() -> None:
    for statement in drop_trigger_statements(op.get_context().dialect.name):
        op.execute(statement)
    op.drop_table("rollup_hourly_confidences")
    op.drop_index("ix_rollup_daily_classes_class_name_day", table_name="rollup_daily_classes")
    op.drop_table("rollup_daily_classes")
    op.drop_index("ix_rollup_hourly_classes_class_name_hour", table_name="rollup_hourly_classes")
    op.drop_table("rollup_hourly_classes")
