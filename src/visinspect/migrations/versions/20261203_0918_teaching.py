"""teaching

A team's own classes and what learns them: label sets, labels (only added), heads (trained
versions with their artifact and status), their audit trail, and every active or shadow head's
answer per prediction. New tables only: the release before serves on without knowing them.

Revision ID: 71e33d57a5ad
Revises: 3c5e7a9b1d24
Create Date: 2026-12-03 09:18:36.218369
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "71e33d57a5ad"
down_revision: str | Sequence[str] | None = "3c5e7a9b1d24"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
phase = "expand"


def upgrade() -> None:
    op.create_table(
        "head_answers",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("prediction_id", sa.BigInteger(), nullable=False),
        sa.Column("head_id", sa.BigInteger(), nullable=False),
        sa.Column("label_set_id", sa.BigInteger(), nullable=False),
        sa.Column("class_name", sa.String(length=64), nullable=False),
        sa.Column("confidence", sa.Double(), nullable=False),
        sa.Column("decided", sa.Boolean(), nullable=False),
        sa.Column("shadow", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_head_answers")),
    )
    with op.batch_alter_table("head_answers", schema=None) as batch_op:
        batch_op.create_index(
            "ix_head_answers_head_id_prediction_id", ["head_id", "prediction_id"], unique=False
        )
        batch_op.create_index(
            "ix_head_answers_label_set_id_decided_confidence_id",
            ["label_set_id", "decided", "confidence", "id"],
            unique=False,
        )
        batch_op.create_index("ix_head_answers_prediction_id", ["prediction_id"], unique=False)

    op.create_table(
        "label_sets",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=True),
        sa.Column(
            "classes",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label_sets")),
        sa.UniqueConstraint("name", name=op.f("uq_label_sets_name")),
    )
    op.create_table(
        "heads",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "label_set_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column(
            "classes",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("base_model_version", sa.String(length=64), nullable=False),
        sa.Column("artifact", sa.LargeBinary(), nullable=False),
        sa.Column("artifact_sha256", sa.String(length=64), nullable=False),
        sa.Column(
            "manifest",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("labels_until", sa.BigInteger(), nullable=False),
        sa.Column("trained_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("trained_by", sa.String(length=64), nullable=True),
        sa.CheckConstraint(
            "status IN ('candidate', 'shadow', 'active', 'retired')", name=op.f("ck_heads_status")
        ),
        sa.ForeignKeyConstraint(
            ["label_set_id"], ["label_sets.id"], name=op.f("fk_heads_label_set_id_label_sets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_heads")),
    )
    with op.batch_alter_table("heads", schema=None) as batch_op:
        batch_op.create_index(
            "ix_heads_label_set_id_version", ["label_set_id", "version"], unique=True
        )
        batch_op.create_index(
            "ix_heads_one_active",
            ["label_set_id"],
            unique=True,
            postgresql_where=sa.text("status = 'active'"),
            sqlite_where=sa.text("status = 'active'"),
        )

    op.create_table(
        "labels",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "label_set_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("prediction_id", sa.BigInteger(), nullable=False),
        sa.Column("class_name", sa.String(length=64), nullable=False),
        sa.Column("labeller", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["label_set_id"], ["label_sets.id"], name=op.f("fk_labels_label_set_id_label_sets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labels")),
    )
    with op.batch_alter_table("labels", schema=None) as batch_op:
        batch_op.create_index("ix_labels_label_set_id_id", ["label_set_id", "id"], unique=False)
        batch_op.create_index(
            "ix_labels_label_set_id_prediction_id_id",
            ["label_set_id", "prediction_id", "id"],
            unique=False,
        )

    op.create_table(
        "head_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("head_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("label_set_id", sa.BigInteger(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("replaced_head_id", sa.BigInteger(), nullable=True),
        sa.Column("actor", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["head_id"], ["heads.id"], name=op.f("fk_head_events_head_id_heads")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_head_events")),
    )


def downgrade() -> None:
    op.drop_table("head_events")
    with op.batch_alter_table("labels", schema=None) as batch_op:
        batch_op.drop_index("ix_labels_label_set_id_prediction_id_id")
        batch_op.drop_index("ix_labels_label_set_id_id")

    op.drop_table("labels")
    with op.batch_alter_table("heads", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_heads_one_active",
            postgresql_where=sa.text("status = 'active'"),
            sqlite_where=sa.text("status = 'active'"),
        )
        batch_op.drop_index("ix_heads_label_set_id_version")

    op.drop_table("heads")
    op.drop_table("label_sets")
    with op.batch_alter_table("head_answers", schema=None) as batch_op:
        batch_op.drop_index("ix_head_answers_prediction_id")
        batch_op.drop_index("ix_head_answers_label_set_id_decided_confidence_id")
        batch_op.drop_index("ix_head_answers_head_id_prediction_id")

    op.drop_table("head_answers")
