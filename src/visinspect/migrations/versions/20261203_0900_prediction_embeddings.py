"""prediction embeddings

Each prediction's embedding (the pooled features a head is trained on), one row per prediction
in a table of its own: its own retention (EMBEDDING_RETENTION_DAYS), and KEEP_EMBEDDINGS=false
writes none. A new table: the release before serves on without knowing it.

Revision ID: 3c5e7a9b1d24
Revises: 7d3f9b1e5a02
Create Date: 2026-12-03 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3c5e7a9b1d24"
down_revision: str | Sequence[str] | None = "7d3f9b1e5a02"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
phase = "expand"


def upgrade() -> None:
    op.create_table(
        "prediction_embeddings",
        sa.Column("prediction_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("low", sa.Double(), nullable=False),
        sa.Column("scale", sa.Double(), nullable=False),
        sa.Column("codes", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("prediction_id", name=op.f("pk_prediction_embeddings")),
    )
    op.create_index(
        op.f("ix_prediction_embeddings_created_at"),
        "prediction_embeddings",
        ["created_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_prediction_embeddings_created_at"), table_name="prediction_embeddings")
    op.drop_table("prediction_embeddings")
