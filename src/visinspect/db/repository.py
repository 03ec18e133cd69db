"""The queries the API needs, nothing else. Functions take a session and only flush."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from visinspect.db.models import PredictionRecord

S = TypeVar("S", bound=Select[*tuple[Any, ...]])


@dataclass(frozen=True, slots=True)
class PredictionFilter:
    class_name: str | None = None
    image_sha256: str | None = None
    created_after: datetime | None = None  # inclusive
    created_before: datetime | None = None  # exclusive


def add_predictions(session: Session, records: list[PredictionRecord]) -> None:
    """One INSERT round trip for a group of rows (ids come back with it)."""
    session.add_all(records)
    session.flush()


def get_prediction(session: Session, prediction_id: int) -> PredictionRecord | None:
    return session.get(PredictionRecord, prediction_id)


def list_predictions(
    session: Session, where: PredictionFilter, limit: int, offset: int
) -> tuple[list[PredictionRecord], int]:
    """One page, newest first (id breaks ties), and the number of rows matching the filter."""
    page = (
        _filtered(select(PredictionRecord), where)
        .order_by(PredictionRecord.created_at.desc(), PredictionRecord.id.desc())
        .limit(limit)
        .offset(offset)
    )
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


def _filtered(statement: S, where: PredictionFilter) -> S:
    if where.class_name is not None:
        statement = statement.where(PredictionRecord.class_name == where.class_name)
    if where.image_sha256 is not None:
        statement = statement.where(PredictionRecord.image_sha256 == where.image_sha256.lower())
    if where.created_after is not None:
        statement = statement.where(PredictionRecord.created_at >= where.created_after)
    if where.created_before is not None:
        statement = statement.where(PredictionRecord.created_at < where.created_before)
    return statement
