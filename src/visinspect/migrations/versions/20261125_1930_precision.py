"""precision

Records the numeric precision of the graph that answered (fp32, int8). Every row before this
revision came from fp32. The column keeps its server default, so a previous release still running
during a rolling update (it does not know the column) goes on inserting rows.

Revision ID: 7c1e5a0d9b42
Revises: da2284f84b07
Create Date: 2026-11-25 19:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7c1e5a0d9b42"
down_revision: str | Sequence[str] | None = "da2284f84b07"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# A column with a server default: a release before it inserts on.
phase = "expand"


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch_op:
        batch_op.add_column(
            sa.Column("precision", sa.String(length=8), nullable=False, server_default="fp32")
        )


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch_op:
        batch_op.drop_column("precision")
