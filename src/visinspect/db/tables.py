"""The tables. Migrations under `visinspect/migrations` are generated from, and tested against, these."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Stable constraint and index names, so that migrations can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware in and out on every backend (SQLite stores no zone; PostgreSQL timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware one")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Autoincrementing 64-bit ids on PostgreSQL; SQLite only autoincrements INTEGER PRIMARY KEY.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")
JsonDocument = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class PredictionRecord(Base):
    """One classified upload: the top-1 in columns (for filtering), the full top-k as JSON."""

    __tablename__ = "predictions"
    __allow_unmapped__ = True  # `heads`, below, is no column

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    request_id: Mapped[str] = mapped_column(String(128), nullable=False)
    model_name: Mapped[str] = mapped_column(String(64), nullable=False)
    model_version: Mapped[str] = mapped_column(String(64), nullable=False)
    # Attribute names follow the API (`backend`, `predictions`); the columns keep their names.
    backend: Mapped[str] = mapped_column("inference_backend", String(32), nullable=False)
    # The server default lets a previous release (which does not know the column) keep inserting.
    precision: Mapped[str] = mapped_column(String(8), nullable=False, server_default="fp32")
    class_id: Mapped[int] = mapped_column(Integer, nullable=False)
    class_name: Mapped[str] = mapped_column(String(128), nullable=False)
    confidence: Mapped[float] = mapped_column(nullable=False)
    predictions: Mapped[list[dict[str, Any]]] = mapped_column("top_k", JsonDocument, nullable=False)
    image_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    image_width: Mapped[int] = mapped_column(Integer, nullable=False)
    image_height: Mapped[int] = mapped_column(Integer, nullable=False)
    image_format: Mapped[str] = mapped_column(String(16), nullable=False)
    image_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    filename: Mapped[str | None] = mapped_column(String(255), nullable=True)
    latency_ms: Mapped[float] = mapped_column(nullable=False)
    # Where the latency went. Nullable (an expand migration): rows from before 0.2.0, and rows a
    # 0.1 release writes during a rolling update, have none.
    decode_ms: Mapped[float | None] = mapped_column(nullable=True)
    inference_ms: Mapped[float | None] = mapped_column(nullable=True)
    # Whether the image store kept the upload: null when IMAGE_STORE_DIR is not set (and in rows
    # from before 0.2.0), false when it could not (a full store or disk: the log line and the
    # metric say which). True means kept then: the cleanup may have removed it since.
    image_kept: Mapped[bool | None] = mapped_column(nullable=True)
    # Not a column: the active heads' answers of a prediction just made, for its response
    # (`inference.heads.HeadAnswer`); they are stored in head_answers.
    heads: tuple[Any, ...] = ()
    # Not a column either: the active detectors' answers (`inference.anomaly.DetectorAnswer`),
    # stored in head_answers too.
    anomalies: tuple[Any, ...] = ()
    # Not a column: all the top-k a prediction just made answers with, when more were asked for
    # than a row keeps (`top_k` holds the first STORED_TOP_K).
    answered: list[dict[str, Any]] | None = None

    @property
    def anomaly(self) -> Any:
        """The one of `anomalies` an answer gives: the most anomalous (with `?label_set=`,
        only that set's detector answered), None without any."""
        return max(self.anomalies, key=lambda a: a.score, default=None)

    __table_args__ = (
        # GET /predictions: newest first, optionally one class or one image.
        Index("ix_predictions_created_at_id", "created_at", "id"),
        # (A hash on PostgreSQL: a digest is only ever looked up whole, and a hash entry holds
        # 4 bytes, not 64 hex digits. The class index holds the id: the class page's order.)
        Index("ix_predictions_class_name_created_at_id", "class_name", "created_at", "id"),
        Index("ix_predictions_image_sha256", "image_sha256", postgresql_using="hash"),
        # The review queue: least confident first.
        Index("ix_predictions_confidence_id", "confidence", "id"),
    )


class ReviewRecord(Base):
    """A person's verdict on one prediction. Reviews are only added: the latest one of a
    prediction counts, the earlier ones stay as its history. `true_class_id` is the class the
    image shows: the predicted one for a `correct` verdict, the reviewer's pick for `wrong`."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    # No foreign key: predictions are to be partitioned by time (a key on `id` alone cannot
    # reference a partitioned table); the service checks that the prediction exists.
    prediction_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    verdict: Mapped[str] = mapped_column(String(8), nullable=False)
    predicted_class_id: Mapped[int] = mapped_column(Integer, nullable=False)
    # The prediction's class and time, copied: quality is counted from the reviews alone,
    # without a join into millions of predictions (nullable: an expand migration backfills).
    predicted_class_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    prediction_created_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    true_class_id: Mapped[int] = mapped_column(Integer, nullable=False)
    note: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    reviewer: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (
        CheckConstraint("verdict IN ('correct', 'wrong')", name="verdict"),
        CheckConstraint(
            "(verdict = 'correct') = (true_class_id = predicted_class_id)", name="verdict_class"
        ),
        # The latest review of a prediction, and a prediction's review history.
        Index("ix_reviews_prediction_id_id", "prediction_id", "id"),
    )


# --- rollups: what statistics and drift read instead of the rows ------------------------------
# Maintained by the database itself: an AFTER INSERT trigger on `predictions` (per statement on
# PostgreSQL, over its transition table; per row on SQLite) adds each inserted row to them in the
# same transaction, whichever release or tool inserted it (db/rollups.py has the triggers' SQL).
# Keys are what a record says about the model, so one hour may hold several model versions.


class _ModelKey:
    """The part of a rollup's key that says which model counted (after the time: `sort_order`
    keeps the key's columns in the migrations' order)."""

    model_version: Mapped[str] = mapped_column(String(64), primary_key=True, sort_order=-5)
    backend: Mapped[str] = mapped_column(String(32), primary_key=True, sort_order=-5)
    precision: Mapped[str] = mapped_column(String(8), primary_key=True, sort_order=-5)


class _ClassCount(_ModelKey):
    """Predictions of one top-1 class, and the sum of their confidences."""

    # By name, as statistics and drift count (a class id means a name only with its model).
    class_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    class_id: Mapped[int] = mapped_column(Integer, nullable=False)
    model_name: Mapped[str] = mapped_column(String(64), nullable=False)
    count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    confidence_sum: Mapped[float] = mapped_column(nullable=False)


class HourlyClassCount(_ClassCount, Base):
    """Predictions per UTC hour, model and top-1 class, with their confidences' sum."""

    __tablename__ = "rollup_hourly_classes"

    hour: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True, sort_order=-10)

    __table_args__ = (Index("ix_rollup_hourly_classes_class_name_hour", "class_name", "hour"),)


class DailyClassCount(_ClassCount, Base):
    """The same per UTC day: all-time statistics read a row per day and class, not per hour."""

    __tablename__ = "rollup_daily_classes"

    day: Mapped[date] = mapped_column(Date(), primary_key=True, sort_order=-10)

    __table_args__ = (Index("ix_rollup_daily_classes_class_name_day", "class_name", "day"),)


class HourlyConfidenceCount(_ModelKey, Base):
    """Predictions per UTC hour and model whose top-1 confidence c has floor(100 c) = bucket
    (0..99; 1.0 counts in 99): the confidence distribution drift compares."""

    __tablename__ = "rollup_hourly_confidences"

    hour: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True, sort_order=-10)
    bucket: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, nullable=False)


class SchemaCompatibility(Base):
    """A row per revision a migration reached (`db/compatibility.py`): the revision and the
    oldest release, by its head revision, that may serve against it. A release that does not
    know the database's revision reads it to tell a newer expand (serve on) from a contract."""

    __tablename__ = "schema_compatibility"

    revision: Mapped[str] = mapped_column(String(32), primary_key=True)
    oldest_compatible_revision: Mapped[str] = mapped_column(String(32), nullable=False)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class EmbeddingRecord(Base):
    """A prediction's embedding (the pooled features a head is trained on), kept so that a head
    can be trained on any image the service has seen without decoding it again.

    uint8 with an affine scale per row: value = low + code * scale. 1,280 bytes of codes and two
    floats, about half of float16's 2,560 bytes; the loss is at most scale / 2 per value (0.3% of
    a row's range), below what changes a linear head's answer (docs/teaching.md measures it).
    No foreign key, as for reviews: predictions are partitioned by day.
    """

    __tablename__ = "prediction_embeddings"

    prediction_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, index=True)
    model_version: Mapped[str] = mapped_column(String(64), nullable=False)
    low: Mapped[float] = mapped_column(nullable=False)
    scale: Mapped[float] = mapped_column(nullable=False)
    codes: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class LabelSetRecord(Base):
    """A team's own classes ("ok", "scratch", "dent"). Classes are only ever added: a class that
    has labels is never renamed or dropped, so every label keeps its meaning."""

    __tablename__ = "label_sets"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    description: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    classes: Mapped[list[str]] = mapped_column(JsonDocument, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class LabelRecord(Base):
    """A person's class for one prediction in one label set. Only added, like reviews: the
    latest label of a prediction in a set counts."""

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    label_set_id: Mapped[int] = mapped_column(ForeignKey("label_sets.id"), nullable=False)
    prediction_id: Mapped[int] = mapped_column(BigInteger, nullable=False)  # no key: partitioned
    class_name: Mapped[str] = mapped_column(String(64), nullable=False)
    labeller: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

    __table_args__ = (
        # The latest label of each prediction in a set; the labels of a set in order.
        Index("ix_labels_label_set_id_prediction_id_id", "label_set_id", "prediction_id", "id"),
        Index("ix_labels_label_set_id_id", "label_set_id", "id"),
    )


HEAD_STATUSES = ("candidate", "shadow", "active", "retired")


class HeadRecord(Base):
    """One trained version of something a label set serves on the base model, its artifact and
    its status. `kind` says what: a "classifier" (a linear layer on the embedding: the set's
    classes) or a "detector" (a bank of good patches: whether the part is good, and where it
    is not). Each kind has its own versions, and at most one active version per set; both
    share one lifecycle (`services/heads.py`)."""

    __tablename__ = "heads"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    label_set_id: Mapped[int] = mapped_column(ForeignKey("label_sets.id"), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False, server_default="classifier")
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    classes: Mapped[list[str]] = mapped_column(JsonDocument, nullable=False)
    base_model_version: Mapped[str] = mapped_column(String(64), nullable=False)
    artifact: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    artifact_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    manifest: Mapped[dict[str, Any]] = mapped_column(JsonDocument, nullable=False)
    # The newest label the training read: labels with a larger id came after it (quality).
    labels_until: Mapped[int] = mapped_column(BigInteger, nullable=False)
    trained_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    trained_by: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (
        Index("ix_heads_label_set_id_kind_version", "label_set_id", "kind", "version", unique=True),
        Index(
            "ix_heads_one_active_per_kind",
            "label_set_id",
            "kind",
            unique=True,
            postgresql_where=text("status = 'active'"),
            sqlite_where=text("status = 'active'"),
        ),
        CheckConstraint("status IN ('candidate', 'shadow', 'active', 'retired')", name="status"),
        CheckConstraint("kind IN ('classifier', 'detector')", name="kind"),
    )


class HeadEventRecord(Base):
    """The audit trail of heads: trained, shadowed, promoted, rolled back, retired: who, when,
    and which version it replaced. Its newest id is the generation every process watches."""

    __tablename__ = "head_events"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    head_id: Mapped[int] = mapped_column(ForeignKey("heads.id"), nullable=False)
    label_set_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    action: Mapped[str] = mapped_column(String(16), nullable=False)
    from_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_status: Mapped[str] = mapped_column(String(16), nullable=False)
    replaced_head_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    actor: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class HeadAnswerRecord(Base):
    """What an active or shadow head answered for one prediction, with its version: written in
    the prediction's transaction. `decided` false: below its class's threshold, a person's turn.

    A detector's answer: `class_name` is its verdict ("ok" or "anomalous"), `confidence` its
    score (1.0 = the threshold), `region` the box around the defect in the image's pixels, and
    `heat` its heat map (grid x grid, one byte a patch: score x 100, at most 255), from which
    GET /predictions/{id}/anomaly-map draws the PNG."""

    __tablename__ = "head_answers"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    prediction_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    head_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    label_set_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    class_name: Mapped[str] = mapped_column(String(64), nullable=False)
    confidence: Mapped[float] = mapped_column(nullable=False)
    decided: Mapped[bool] = mapped_column(Boolean, nullable=False)
    shadow: Mapped[bool] = mapped_column(Boolean, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    region: Mapped[list[int] | None] = mapped_column(JsonDocument, nullable=True)
    heat: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)

    __table_args__ = (
        Index("ix_head_answers_head_id_prediction_id", "head_id", "prediction_id"),
        Index("ix_head_answers_prediction_id", "prediction_id"),
        # The inspection queue: a detector's anomalous answers, most anomalous first (only
        # those rows: a detector's ok answers, the most of them, cost this index nothing).
        Index(
            "ix_head_answers_anomalous",
            "head_id",
            "confidence",
            "id",
            postgresql_where=text("class_name = 'anomalous'"),
            sqlite_where=text("class_name = 'anomalous'"),
        ),
        # The "needs a person" queue: a set's undecided answers, least confident first.
        Index(
            "ix_head_answers_label_set_id_decided_confidence_id",
            "label_set_id",
            "decided",
            "confidence",
            "id",
        ),
    )
