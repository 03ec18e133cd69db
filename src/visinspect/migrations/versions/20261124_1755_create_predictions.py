"""create predictions

Revision ID: 3e21dee33064
Revises:
Create Date: 2026-11-24 17:55:13.234095
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "3e21dee33064"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# The schema begins here: no release before it can serve (db/compatibility.py).
phase = "contract"


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("class_id", sa.Integer(), nullable=False),
        sa.Column("class_name", sa.String(length=128), nullable=False),
        sa.Column("confidence", sa.Double(), nullable=False),
        sa.Column(
            "top_k",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("image_sha256", sa.String(length=64), nullable=False),
        sa.Column("image_width", sa.Integer(), nullable=False),
        sa.Column("image_height", sa.Integer(), nullable=False),
        sa.Column("image_format", sa.String(length=16), nullable=False),
        sa.Column("image_bytes", sa.BigInteger(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=True),
        sa.Column("latency_ms", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
    )
    op.create_index("ix_predictions_created_at_id", "predictions", ["created_at", "id"])
    op.create_index(
        "ix_predictions_class_name_created_at", "predictions", ["class_name", "created_at"]
    )
    op.create_index("ix_predictions_image_sha256", "predictions", ["image_sha256"])


def downgrade() -> None:
    op.drop_index("ix_predictions_image_sha256", table_name="predictions")
    op.drop_index("ix_predictions_class_name_created_at", table_name="predictions")
    op.drop_index("ix_predictions_created_at_id", table_name="predictions")
    op.drop_table("predictions")
