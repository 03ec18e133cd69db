"""reviews

People's verdicts on predictions (POST /predictions/{id}/review): only added, the latest of a
prediction counts. A new table: the release before this one serves on.

Revision ID: 2f6c9b8a4d10
Revises: 9d4a7e31c6b2
Create Date: 2026-12-01 19:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2f6c9b8a4d10"
down_revision: str | Sequence[str] | None = "9d4a7e31c6b2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# A new table: the release before it serves on.
phase = "expand"


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("prediction_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verdict", sa.String(length=8), nullable=False),
        sa.Column("predicted_class_id", sa.Integer(), nullable=False),
        sa.Column("true_class_id", sa.Integer(), nullable=False),
        sa.Column("note", sa.String(length=2000), nullable=True),
        sa.Column("reviewer", sa.String(length=64), nullable=True),
        sa.CheckConstraint("verdict IN ('correct', 'wrong')", name=op.f("ck_reviews_verdict")),
        sa.CheckConstraint(
            "(verdict = 'correct') = (true_class_id = predicted_class_id)",
            name=op.f("ck_reviews_verdict_class"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviews")),
    )
    op.create_index("ix_reviews_prediction_id_id", "reviews", ["prediction_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_reviews_prediction_id_id", table_name="reviews")
    op.drop_table("reviews")
