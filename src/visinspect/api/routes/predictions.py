"""GET /predictions and /predictions/{id}: the audit trail, newest first."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from visinspect.api.deps import DatabaseDep
from visinspect.api.schemas import (
    ClassCount,
    DayCount,
    PredictionOut,
    PredictionPage,
    StatsOut,
    error_responses,
)
from visinspect.api.security import require_api_key
from visinspect.db import repository
from visinspect.db.repository import PredictionFilter
from visinspect.errors import InvalidTimeRange, PredictionNotFound

router = APIRouter(tags=["predictions"], dependencies=[Depends(require_api_key)])

ClassName = Annotated[
    str | None, Query(max_length=128, description="Exact top-1 class name, e.g. `espresso`")
]
CreatedAfter = Annotated[
    datetime | None, Query(description="Inclusive, ISO 8601; no zone means UTC")
]
CreatedBefore = Annotated[
    datetime | None, Query(description="Exclusive, ISO 8601; no zone means UTC")
]


@router.get(
    "/predictions",
    response_model=PredictionPage,
    summary="List stored predictions, newest first",
    responses=error_responses(401, 403, 422, 503),
)
async def list_predictions(
    database: DatabaseDep,
    class_name: ClassName = None,
    image_sha256: Annotated[
        str | None, Query(pattern=r"^[0-9a-fA-F]{64}$", description="Only this image")
    ] = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> PredictionPage:
    where = _filter(class_name, image_sha256, created_after, created_before)
    records, total = await database.run(repository.list_predictions, where, limit, offset)
    return PredictionPage(
        items=[PredictionOut.from_record(r) for r in records],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get(
    "/predictions/stats",
    response_model=StatsOut,
    summary="Counts per class and per day, computed in SQL",
    responses=error_responses(401, 403, 422, 503),
)
async def prediction_stats(
    database: DatabaseDep,
    class_name: ClassName = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    top_classes: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> StatsOut:
    where = _filter(class_name, None, created_after, created_before)
    total, by_class, by_day = await database.run(repository.prediction_stats, where, top_classes)
    return StatsOut(
        total=total,
        by_class=[ClassCount(class_name=n, count=c) for n, c in by_class],
        by_day=[DayCount(day=date.fromisoformat(d), count=c) for d, c in by_day],
    )


@router.get(
    "/predictions/{prediction_id}",
    response_model=PredictionOut,
    summary="One stored prediction",
    responses=error_responses(401, 403, 404, 422, 503),
)
async def get_prediction(
    database: DatabaseDep, prediction_id: Annotated[int, Path(ge=1, le=2**63 - 1)]
) -> PredictionOut:
    record = await database.run(repository.get_prediction, prediction_id)
    if record is None:
        raise PredictionNotFound(f"no prediction with id {prediction_id}")
    return PredictionOut.from_record(record)


def _filter(
    class_name: str | None,
    image_sha256: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
) -> PredictionFilter:
    after, before = _as_utc(created_after), _as_utc(created_before)
    if after is not None and before is not None and after >= before:
        raise InvalidTimeRange("created_after must be earlier than created_before")
    return PredictionFilter(class_name, image_sha256, after, before)


def _as_utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
