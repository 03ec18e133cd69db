"""history indexes

Two indexes of `predictions` replaced:
- (class_name, created_at) becomes (class_name, created_at, id): the one-class page's exact
  order (newest first, id breaking ties). Without the id, PostgreSQL may page a class through
  the (created_at, id) index instead, filtering row by row: quick for a class that is frequent
  lately, over 100 ms at 10 M rows for one that was frequent and has gone quiet.
- image_sha256's btree becomes a hash index: it is looked up by equality only, and a hash entry
  holds a 4-byte hash where the btree's holds the 64 hex digits (31 bytes a row against about
  100 at 10 M rows: docs/benchmarks.md).

On PostgreSQL each partition's index is built CONCURRENTLY, inserts going on meanwhile
(`db/partitions.build_index`); then the old index is dropped and the new one renamed in the
migration's transaction, which holds the table for a moment only. It drops and renames, so it
is no expand; but no release names these indexes: 0.1.0 (head 5b8f0c2e7a14) and every release
since serve on. SQLite has no hash indexes: its digest index stays a btree, and its class index
is rebuilt.

Revision ID: 7d3f9b1e5a02
Revises: 1a9c4e6b8d20
Create Date: 2026-12-01 23:00:00
"""

from collections.abc import Sequence

from alembic import op

from visinspect.db.partitions import build_index

revision: str = "7d3f9b1e5a02"
down_revision: str | Sequence[str] | None = "1a9c4e6b8d20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
phase = "contract"
serves_from = "5b8f0c2e7a14"

CLASS_BEFORE = "ix_predictions_class_name_created_at"
CLASS_AFTER = "ix_predictions_class_name_created_at_id"
DIGEST = "ix_predictions_image_sha256"


def upgrade() -> None:
    _replace(CLASS_BEFORE, CLASS_AFTER, ["class_name", "created_at", "id"])
    _replace(DIGEST, DIGEST, ["image_sha256"], using="hash")


def downgrade() -> None:
    _replace(DIGEST, DIGEST, ["image_sha256"])
    _replace(CLASS_AFTER, CLASS_BEFORE, ["class_name", "created_at"])


def _replace(old: str, new: str, columns: list[str], using: str = "btree") -> None:
    if op.get_context().dialect.name != "postgresql":
        if old != new:  # SQLite has btrees only: the digest's stays as it is
            op.drop_index(old, table_name="predictions")
            op.create_index(new, "predictions", columns)
        return
    building = f"{new[:54]}_building"
    with op.get_context().autocommit_block():
        build_index(op.get_bind(), building, columns, using)
    op.execute("SET LOCAL lock_timeout = '10s'")  # rather fail (and retry) than queue inserts
    op.execute(f"DROP INDEX IF EXISTS {old}")
    op.execute(f"ALTER INDEX {building} RENAME TO {new}")
