"""partition predictions by day

PostgreSQL: `predictions` becomes a table partitioned by range of `created_at`, a partition per
UTC day (`db/partitions.py`), so that RETENTION_DAYS drops whole days. The rows
already there are copied into the partitioned table in this migration's transaction (nothing is
lost; inserts wait for it: at 10 M rows, minutes: see docs/benchmarks.md), then the old table is
dropped. The primary key becomes (id, created_at), as partitioning requires; ids keep their
sequence. An index on (confidence, id) comes with it: the review queue (least confident first)
reads it in order instead of sorting every unreviewed row. Downgrade copies the rows back into a plain table. SQLite keeps a plain table (with the new index).

Revision ID: 4b7e9a2c6d18
Revises: 8c2a5e7d1f43
Create Date: 2026-12-01 21:00:00
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

from visinspect.db.partitions import AHEAD_DAYS, create_partition_sql
from visinspect.db.rollups import drop_trigger_statements, trigger_statements

revision: str = "4b7e9a2c6d18"
down_revision: str | Sequence[str] | None = "8c2a5e7d1f43"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# It renames and drops a table (the old copy), so it is no expand; but the columns, their
# defaults and the id sequence are unchanged: releases from 0.1.0 (head 5b8f0c2e7a14) insert,
# read and serve on the partitioned table as before.
phase = "contract"
serves_from = "5b8f0c2e7a14"

_INDEXES = {
    "ix_predictions_created_at_id": "(created_at, id)",
    "ix_predictions_class_name_created_at": "(class_name, created_at)",
    "ix_predictions_image_sha256": "(image_sha256)",
}


_QUEUE_INDEX = "ix_predictions_confidence_id"


def _swap_in(new_kind: str) -> None:
    """Rename `predictions` (and its key and indexes) aside, create the new `predictions` of
    `new_kind` ("partitioned" or "plain") from it, copy every row, drop the old one."""
    for statement in drop_trigger_statements("postgresql"):
        op.execute(statement)
    op.execute("ALTER TABLE predictions RENAME TO predictions_old")
    op.execute("ALTER TABLE predictions_old RENAME CONSTRAINT pk_predictions TO pk_predictions_old")
    for name in _INDEXES:
        op.execute(f"ALTER INDEX {name} RENAME TO {name}_old")
    op.execute(f"ALTER INDEX IF EXISTS {_QUEUE_INDEX} RENAME TO {_QUEUE_INDEX}_old")
    partitioning = " PARTITION BY RANGE (created_at)" if new_kind == "partitioned" else ""
    op.execute(
        "CREATE TABLE predictions (LIKE predictions_old INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        + partitioning
    )
    key = "(id, created_at)" if new_kind == "partitioned" else "(id)"
    op.execute(f"ALTER TABLE predictions ADD CONSTRAINT pk_predictions PRIMARY KEY {key}")
    for name, columns in _INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON predictions {columns}")
    if new_kind == "partitioned":  # the review queue, least confident first, reads it in order
        op.execute(f"CREATE INDEX {_QUEUE_INDEX} ON predictions (confidence, id)")
    op.execute("ALTER SEQUENCE predictions_id_seq OWNED BY predictions.id")
    if new_kind == "partitioned":
        _create_partitions()
    op.execute("INSERT INTO predictions SELECT * FROM predictions_old")
    op.execute("DROP TABLE predictions_old")
    # The copied rows are counted already: the trigger comes back after the copy.
    for statement in trigger_statements("postgresql"):
        op.execute(statement)


def _create_partitions() -> None:
    """A partition for each day that has rows, and for today and the coming days (the group
    commit makes any other day's when a row of it comes)."""
    connection = op.get_bind()
    days = set(
        connection.scalars(
            text(
                "SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date FROM predictions_old "
                "UNION SELECT (now() AT TIME ZONE 'UTC')::date + n "
                "FROM generate_series(0, :ahead) AS n"
            ),
            {"ahead": AHEAD_DAYS},
        )
    )
    for day in sorted(days):
        op.execute(create_partition_sql(day))


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        _swap_in("partitioned")
    else:  # SQLite keeps its plain table and gains the review queue's index
        op.create_index(_QUEUE_INDEX, "predictions", ["confidence", "id"])


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        _swap_in("plain")  # the partitions and the queue's index go with the old table
    else:
        op.drop_index(_QUEUE_INDEX, table_name="predictions")
