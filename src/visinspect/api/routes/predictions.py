"""GET /predictions, /predictions/stats and /predictions/{id}: the audit trail, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from visinspect.api.deps import HistoryServiceDep
from visinspect.api.schemas import (
    ClassCount,
    DayCount,
    PredictionOut,
    PredictionPage,
    StatsOut,
    error_responses,
)
from visinspect.api.security import require_api_key
from visinspect.services.history import HistoryFilter

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
    history: HistoryServiceDep,
    class_name: ClassName = None,
    image_sha256: Annotated[
        str | None, Query(pattern=r"^[0-9a-fA-F]{64}$", description="Only this image")
    ] = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> PredictionPage:
    where = HistoryFilter(class_name, image_sha256, created_after, created_before)
    page = await history.page(where, limit, offset)
    return PredictionPage(
        items=[PredictionOut.model_validate(r) for r in page.records],
        total=page.total,
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
    history: HistoryServiceDep,
    class_name: ClassName = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    top_classes: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> StatsOut:
    stats = await history.stats(
        HistoryFilter(class_name, None, created_after, created_before), top_classes
    )
    return StatsOut(
        total=stats.total,
        by_class=[ClassCount(class_name=n, count=c) for n, c in stats.by_class],
        by_day=[DayCount(day=d, count=c) for d, c in stats.by_day],
    )


@router.get(
    "/predictions/{prediction_id}",
    response_model=PredictionOut,
    summary="One stored prediction",
    responses=error_responses(401, 403, 404, 422, 503),
)
async def get_prediction(
    history: HistoryServiceDep, prediction_id: Annotated[int, Path(ge=1, le=2**63 - 1)]
) -> PredictionOut:
    return PredictionOut.model_validate(await history.get(prediction_id))
