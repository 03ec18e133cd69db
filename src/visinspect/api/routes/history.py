"""The audit trail: GET /predictions (newest first, or the review queue), /predictions/stats and
/predictions/{id}, backed by `services/history.py`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from visinspect.api.deps import HistoryServiceDep, ReviewServiceDep
from visinspect.api.params import (
    ClassAndTime,
    ClassName,
    CreatedAfter,
    CreatedBefore,
    PredictionId,
    TopClasses,
)
from visinspect.api.schemas import (
    ClassCount,
    DayCount,
    PredictionOut,
    PredictionPage,
    ReviewOut,
    StatsOut,
    error_responses,
)
from visinspect.api.security import require_api_key
from visinspect.filters import HistoryFilter

router = APIRouter(tags=["predictions"], dependencies=[Depends(require_api_key)])


@router.get(
    "/predictions",
    response_model=PredictionPage,
    summary="List stored predictions, newest first; `reviewed=false` is the review queue",
    responses=error_responses(401, 403, 422, 503),
)
async def list_predictions(
    history: HistoryServiceDep,
    reviews: ReviewServiceDep,
    class_name: ClassName = None,
    image_sha256: Annotated[
        str | None, Query(pattern=r"^[0-9a-fA-F]{64}$", description="Only this image")
    ] = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    reviewed: Annotated[
        bool | None,
        Query(description="Only predictions with (true) or without (false) a review"),
    ] = None,
    min_confidence: Annotated[float | None, Query(ge=0, le=1, description="Inclusive")] = None,
    max_confidence: Annotated[float | None, Query(ge=0, le=1, description="Inclusive")] = None,
    order: Annotated[
        Literal["newest", "least_confident"] | None,
        Query(description="Default `newest`; `least_confident` when `reviewed=false` (the queue)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    cursor: Annotated[
        str | None,
        Query(max_length=512, description="The previous page's `next_cursor`: the next page"),
    ] = None,
    offset: Annotated[
        int,
        Query(
            ge=0,
            le=1_000_000,
            description="Rows to skip, at most 10,000 (422 `offset_too_deep` beyond: use "
            "`cursor`); not with `cursor`",
        ),
    ] = 0,
) -> PredictionPage:
    where = HistoryFilter(
        class_name=class_name,
        image_sha256=image_sha256,
        created_after=created_after,
        created_before=created_before,
        reviewed=reviewed,
        min_confidence=min_confidence,
        max_confidence=max_confidence,
    )
    least_confident = (order or ("least_confident" if reviewed is False else "newest")) != "newest"
    page = await history.page(where, limit, offset, least_confident, cursor)
    return PredictionPage(
        items=[prediction_out(r, page.reviews.get(r.id), reviews.labels) for r in page.records],
        total=page.total,
        total_exact=page.total_exact,
        next_cursor=page.next_cursor,
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
    where: ClassAndTime,
    top_classes: TopClasses = 20,
) -> StatsOut:
    stats = await history.stats(where, top_classes)
    return StatsOut(
        total=stats.total,
        by_class=[ClassCount(class_name=n, count=c) for n, c in stats.by_class],
        by_day=[DayCount(day=d, count=c) for d, c in stats.by_day],
    )


@router.get(
    "/predictions/{prediction_id}",
    response_model=PredictionOut,
    summary="One stored prediction, with its review that counts",
    responses=error_responses(401, 403, 404, 422, 503),
)
async def get_prediction(
    history: HistoryServiceDep, reviews: ReviewServiceDep, prediction_id: PredictionId
) -> PredictionOut:
    record, review = await history.get_with_review(prediction_id)
    return prediction_out(record, review, reviews.labels)


def prediction_out(record: object, review: object | None, labels: Sequence[str]) -> PredictionOut:
    """A stored prediction as the client sees it, with its review that counts."""
    out = PredictionOut.model_validate(record)
    if review is None:
        return out
    return out.model_copy(
        update={"review": ReviewOut.model_validate(review, context={"labels": labels})}
    )
