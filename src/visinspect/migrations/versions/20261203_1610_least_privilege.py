"""least privilege

The rollups' trigger function runs as the schema's owner (SECURITY DEFINER, its search_path fixed
to the schema): the serving role, granted only what serving needs (db/schema.py), writes no
rollup row itself. Nothing else changes: the release before serves on.

Revision ID: 5b8e2f4c7a13
Revises: 71e33d57a5ad
Create Date: 2026-12-03 16:10:00.000000
"""

from collections.abc import Sequence

from alembic import op

from visinspect.db.rollups import POSTGRES_DEFINER, POSTGRES_INVOKER

revision: str = "5b8e2f4c7a13"
down_revision: str | Sequence[str] | None = "71e33d57a5ad"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
phase = "expand"


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(POSTGRES_DEFINER)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(POSTGRES_INVOKER)
