"""review context

Each review carries its prediction's class name and time, so that quality is counted from the
reviews alone (at 10 M predictions the join took seconds). Nullable columns, backfilled here from
the predictions: the release before serves on (it writes no reviews without them: reviews came
with this release).

Revision ID: 1a9c4e6b8d20
Revises: 4b7e9a2c6d18
Create Date: 2026-12-01 21:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1a9c4e6b8d20"
down_revision: str | Sequence[str] | None = "4b7e9a2c6d18"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
phase = "expand"


def upgrade() -> None:
    with op.batch_alter_table("reviews") as batch_op:
        batch_op.add_column(sa.Column("predicted_class_name", sa.String(length=128), nullable=True))
        batch_op.add_column(
            sa.Column("prediction_created_at", sa.DateTime(timezone=True), nullable=True)
        )
    op.execute(
        "UPDATE reviews SET predicted_class_name = (SELECT p.class_name FROM predictions p "
        "WHERE p.id = reviews.prediction_id), prediction_created_at = (SELECT p.created_at "
        "FROM predictions p WHERE p.id = reviews.prediction_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("reviews") as batch_op:
        batch_op.drop_column("prediction_created_at")
        batch_op.drop_column("predicted_class_name")
