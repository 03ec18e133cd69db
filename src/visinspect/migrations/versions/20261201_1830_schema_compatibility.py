"""schema compatibility

The table in which every migration run records the revision it reached and the oldest release
that may serve against it (db/compatibility.py): from this revision on, a release keeps serving
while a newer release's expand migrations run, and after a rollback to it.

Revision ID: 5b8f0c2e7a14
Revises: 7c1e5a0d9b42
Create Date: 2026-12-01 18:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5b8f0c2e7a14"
down_revision: str | Sequence[str] | None = "7c1e5a0d9b42"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# A new table: the release before it serves on.
phase = "expand"


def upgrade() -> None:
    op.create_table(
        "schema_compatibility",
        sa.Column("revision", sa.String(length=32), nullable=False),
        sa.Column("oldest_compatible_revision", sa.String(length=32), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("revision", name=op.f("pk_schema_compatibility")),
    )


def downgrade() -> None:
    op.drop_table("schema_compatibility")
