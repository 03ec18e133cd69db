"""image kept

Each record says whether the image store kept its upload (IMAGE_STORE_DIR). A nullable column:
rows from before, rows of a service without a store, and rows that the previous release inserts
during the rolling update have none.

Revision ID: 6e1d3b9f2a57
Revises: 2f6c9b8a4d10
Create Date: 2026-12-01 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "6e1d3b9f2a57"
down_revision: str | Sequence[str] | None = "2f6c9b8a4d10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# A nullable column: the release before this one serves on.
phase = "expand"


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch_op:
        batch_op.add_column(sa.Column("image_kept", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch_op:
        batch_op.drop_column("image_kept")
