"""inference backend

Records which runtime executed the network. Rows written before this revision all came from
PyTorch (the only backend then), so they are filled in as such.

Revision ID: da2284f84b07
Revises: 3e21dee33064
Create Date: 2026-11-24 18:22:24.328634
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "da2284f84b07"
down_revision: str | Sequence[str] | None = "3e21dee33064"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# A NOT NULL column without a default: a release before it can no longer insert.
phase = "contract"


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch_op:
        batch_op.add_column(
            sa.Column(
                "inference_backend",
                sa.String(length=32),
                nullable=False,
                server_default="pytorch",
            )
        )
    with op.batch_alter_table("predictions") as batch_op:
        batch_op.alter_column("inference_backend", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch_op:
        batch_op.drop_column("inference_backend")
