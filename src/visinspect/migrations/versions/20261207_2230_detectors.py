"""detectors

A head is now of a kind: "classifier" (what every head was) or "detector" (a bank of good
patches: anomaly detection, `inference/anomaly.py`). Each kind keeps its own versions and its own
active version per label set, so the two unique indexes gain the kind. A detector's answer keeps
its region and its heat map beside the verdict and the score.

Contract, because the narrower unique indexes are dropped (after the wider ones are built). What
the releases before it need is still there: their heads get the kind's default, and the wider
indexes hold for them as the narrow ones did. They see a detector as a head whose artifact they
cannot read, and skip it with one log line. So every release since 0.1.0 serves on.

Revision ID: 9d4c1e7b3a52
Revises: 5b8e2f4c7a13
Create Date: 2026-12-07 22:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "9d4c1e7b3a52"
down_revision: str | Sequence[str] | None = "5b8e2f4c7a13"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
phase = "contract"
serves_from = "5b8f0c2e7a14"  # 0.1.0's head, as the partitioning migration says

_ACTIVE = "status = 'active'"


def upgrade() -> None:
    with op.batch_alter_table("heads", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), server_default="classifier", nullable=False)
        )
        batch_op.create_check_constraint("kind", "kind IN ('classifier', 'detector')")
    with op.batch_alter_table("heads", schema=None) as batch_op:
        batch_op.create_index(
            "ix_heads_label_set_id_kind_version", ["label_set_id", "kind", "version"], unique=True
        )
        batch_op.create_index(
            "ix_heads_one_active_per_kind",
            ["label_set_id", "kind"],
            unique=True,
            postgresql_where=sa.text(_ACTIVE),
            sqlite_where=sa.text(_ACTIVE),
        )
        batch_op.drop_index("ix_heads_label_set_id_version")
        batch_op.drop_index("ix_heads_one_active")
    with op.batch_alter_table("head_answers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "region",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )
        batch_op.add_column(sa.Column("heat", sa.LargeBinary(), nullable=True))
        batch_op.create_index(
            "ix_head_answers_anomalous",
            ["head_id", "confidence", "id"],
            unique=False,
            postgresql_where=sa.text("class_name = 'anomalous'"),
            sqlite_where=sa.text("class_name = 'anomalous'"),
        )


def downgrade() -> None:
    op.execute(
        "DELETE FROM head_answers WHERE head_id IN (SELECT id FROM heads WHERE kind = 'detector')"
    )
    op.execute(
        "DELETE FROM head_events WHERE head_id IN (SELECT id FROM heads WHERE kind = 'detector')"
    )
    op.execute("DELETE FROM heads WHERE kind = 'detector'")
    with op.batch_alter_table("head_answers", schema=None) as batch_op:
        batch_op.drop_index("ix_head_answers_anomalous")
        batch_op.drop_column("heat")
        batch_op.drop_column("region")
    with op.batch_alter_table("heads", schema=None) as batch_op:
        batch_op.create_index(
            "ix_heads_label_set_id_version", ["label_set_id", "version"], unique=True
        )
        batch_op.create_index(
            "ix_heads_one_active",
            ["label_set_id"],
            unique=True,
            postgresql_where=sa.text(_ACTIVE),
            sqlite_where=sa.text(_ACTIVE),
        )
        batch_op.drop_index("ix_heads_one_active_per_kind")
        batch_op.drop_index("ix_heads_label_set_id_kind_version")
        batch_op.drop_constraint("kind", type_="check")
        batch_op.drop_column("kind")
