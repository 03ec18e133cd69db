"""The queries the API needs, nothing else. Functions take a session and only flush."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, case, exists, func, select
from sqlalchemy.orm import Session

from visinspect.db.models import PredictionRecord, ReviewRecord

S = TypeVar("S", bound=Select[*tuple[Any, ...]])


@dataclass(frozen=True, slots=True)
class PredictionFilter:
    class_name: str | None = None
    image_sha256: str | None = None
    created_after: datetime | None = None  # inclusive
    created_before: datetime | None = None  # exclusive
    reviewed: bool | None = None
    min_confidence: float | None = None  # inclusive
    max_confidence: float | None = None  # inclusive


@dataclass(frozen=True, slots=True)
class QualityCounts:
    """Latest reviews of the predictions that match a filter, counted in SQL."""

    reviewed: int
    correct: int
    by_class: list[tuple[str, int, int]]  # predicted class, reviewed, correct; most reviewed first
    by_day: list[tuple[str, int, int]]  # UTC day of the prediction, reviewed, correct; oldest first
    confusions: list[tuple[int, str, int, int]]  # predicted id and name, true id, count


def add_predictions(session: Session, records: list[PredictionRecord]) -> None:
    """One INSERT round trip for a group of rows (ids come back with it)."""
    session.add_all(records)
    session.flush()


def get_prediction(session: Session, prediction_id: int) -> PredictionRecord | None:
    return session.get(PredictionRecord, prediction_id)


def list_predictions(
    session: Session,
    where: PredictionFilter,
    limit: int,
    offset: int,
    least_confident_first: bool = False,
) -> tuple[list[PredictionRecord], int]:
    """One page, newest first (or least confident first; id breaks ties), and the number of rows
    matching the filter."""
    order = (
        (PredictionRecord.confidence.asc(), PredictionRecord.id.asc())
        if least_confident_first
        else (PredictionRecord.created_at.desc(), PredictionRecord.id.desc())
    )
    page = _filtered(select(PredictionRecord), where).order_by(*order).limit(limit).offset(offset)
    total = session.scalar(_filtered(select(func.count(PredictionRecord.id)), where))
    return list(session.scalars(page)), int(total or 0)


def prediction_stats(
    session: Session, where: PredictionFilter, top_classes: int
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """Total, counts per top-1 class (most frequent first) and per UTC day (oldest first), in SQL."""
    count = func.count(PredictionRecord.id)
    total = session.scalar(_filtered(select(count), where)) or 0
    by_class = session.execute(
        _filtered(select(PredictionRecord.class_name, count), where)
        .group_by(PredictionRecord.class_name)
        .order_by(count.desc(), PredictionRecord.class_name)
        .limit(top_classes)
    ).all()
    day = func.date(PredictionRecord.created_at)  # connections run in UTC (db/session.py)
    by_day = session.execute(_filtered(select(day, count), where).group_by(day).order_by(day)).all()
    return (
        int(total),
        [(str(name), int(n)) for name, n in by_class],
        [(str(d), int(n)) for d, n in by_day],
    )


def add_review(session: Session, review: ReviewRecord) -> ReviewRecord:
    session.add(review)
    session.flush()
    return review


def reviews_of(session: Session, prediction_id: int) -> list[ReviewRecord]:
    """Every review of one prediction, newest first."""
    statement = (
        select(ReviewRecord)
        .where(ReviewRecord.prediction_id == prediction_id)
        .order_by(ReviewRecord.id.desc())
    )
    return list(session.scalars(statement))


def latest_reviews(session: Session, prediction_ids: list[int]) -> dict[int, ReviewRecord]:
    """The review that counts (the latest) of each of these predictions that has one."""
    if not prediction_ids:
        return {}
    latest = (
        select(func.max(ReviewRecord.id))
        .where(ReviewRecord.prediction_id.in_(prediction_ids))
        .group_by(ReviewRecord.prediction_id)
    )
    rows = session.scalars(select(ReviewRecord).where(ReviewRecord.id.in_(latest)))
    return {review.prediction_id: review for review in rows}


def quality_counts(
    session: Session, where: PredictionFilter, top_classes: int, top_confusions: int
) -> QualityCounts:
    """Accuracy by the latest review of each prediction: overall, per predicted class, per UTC
    day of the prediction, and the most frequent confusions (predicted -> true)."""
    latest = select(func.max(ReviewRecord.id)).group_by(ReviewRecord.prediction_id)

    def reviewed(statement: S) -> S:
        joined = statement.join(ReviewRecord, ReviewRecord.prediction_id == PredictionRecord.id)
        return _filtered(joined.where(ReviewRecord.id.in_(latest)), where)

    count = func.count(ReviewRecord.id)
    correct: ColumnElement[int] = func.coalesce(
        func.sum(case((ReviewRecord.verdict == "correct", 1), else_=0)), 0
    )
    total, right = session.execute(
        reviewed(select(count, correct).select_from(PredictionRecord))
    ).one()
    by_class = session.execute(
        reviewed(select(PredictionRecord.class_name, count, correct).select_from(PredictionRecord))
        .group_by(PredictionRecord.class_name)
        .order_by(count.desc(), PredictionRecord.class_name)
        .limit(top_classes)
    ).all()
    day = func.date(PredictionRecord.created_at)  # connections run in UTC (db/session.py)
    by_day = session.execute(
        reviewed(select(day, count, correct).select_from(PredictionRecord))
        .group_by(day)
        .order_by(day)
    ).all()
    confusions = session.execute(
        reviewed(
            select(
                PredictionRecord.class_id,
                PredictionRecord.class_name,
                ReviewRecord.true_class_id,
                count,
            ).select_from(PredictionRecord)
        )
        .where(ReviewRecord.verdict == "wrong")
        .group_by(
            PredictionRecord.class_id, PredictionRecord.class_name, ReviewRecord.true_class_id
        )
        .order_by(count.desc(), PredictionRecord.class_name, ReviewRecord.true_class_id)
        .limit(top_confusions)
    ).all()
    return QualityCounts(
        int(total),
        int(right),
        [(str(name), int(n), int(ok)) for name, n, ok in by_class],
        [(str(d), int(n), int(ok)) for d, n, ok in by_day],
        [(int(p), str(name), int(t), int(n)) for p, name, t, n in confusions],
    )


# The confidences' distribution is read as its cumulative counts at these edges (0.01, ..., 0.99):
# one scan, on every database, and what a two-sample Kolmogorov-Smirnov statistic needs.
CONFIDENCE_EDGES = tuple(k / 100 for k in range(1, 100))


@dataclass(frozen=True, slots=True)
class WindowDistribution:
    count: int
    confidence_sum: float
    by_class: dict[str, int]  # top-1 class -> predictions
    below_edge: tuple[int, ...]  # predictions with confidence < each of CONFIDENCE_EDGES


def window_distribution(session: Session, start: datetime, end: datetime) -> WindowDistribution:
    """Top-1 classes and confidences of the predictions made in [start, end)."""
    in_window = (PredictionRecord.created_at >= start, PredictionRecord.created_at < end)
    cumulative = [
        func.coalesce(func.sum(case((PredictionRecord.confidence < edge, 1), else_=0)), 0)
        for edge in CONFIDENCE_EDGES
    ]
    count, total, *below = session.execute(
        select(
            func.count(PredictionRecord.id),
            func.coalesce(func.sum(PredictionRecord.confidence), 0.0),
            *cumulative,
        ).where(*in_window)
    ).one()
    by_class = session.execute(
        select(PredictionRecord.class_name, func.count(PredictionRecord.id))
        .where(*in_window)
        .group_by(PredictionRecord.class_name)
    ).all()
    return WindowDistribution(
        int(count),
        float(total),
        {str(n): int(c) for n, c in by_class},
        tuple(int(b) for b in below),
    )


def _filtered(statement: S, where: PredictionFilter) -> S:
    if where.class_name is not None:
        statement = statement.where(PredictionRecord.class_name == where.class_name)
    if where.image_sha256 is not None:
        statement = statement.where(PredictionRecord.image_sha256 == where.image_sha256.lower())
    if where.created_after is not None:
        statement = statement.where(PredictionRecord.created_at >= where.created_after)
    if where.created_before is not None:
        statement = statement.where(PredictionRecord.created_at < where.created_before)
    if where.min_confidence is not None:
        statement = statement.where(PredictionRecord.confidence >= where.min_confidence)
    if where.max_confidence is not None:
        statement = statement.where(PredictionRecord.confidence <= where.max_confidence)
    if where.reviewed is not None:
        has_review = exists().where(ReviewRecord.prediction_id == PredictionRecord.id)
        statement = statement.where(has_review if where.reviewed else ~has_review)
    return statement
