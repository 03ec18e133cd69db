"""latency breakdown

Each record says where its latency went: decoding and preprocessing, then the wait for the model
and the forward pass. Nullable columns: rows from before, and rows that a 0.1 release still
running during the rolling update inserts (it does not know the columns), have none.

Revision ID: 9d4a7e31c6b2
Revises: 5b8f0c2e7a14
Create Date: 2026-12-01 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9d4a7e31c6b2"
down_revision: str | Sequence[str] | None = "5b8f0c2e7a14"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Nullable columns: the release before this one serves on.
phase = "expand"


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch_op:
        batch_op.add_column(sa.Column("decode_ms", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("inference_ms", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch_op:
        batch_op.drop_column("inference_ms")
        batch_op.drop_column("decode_ms")
