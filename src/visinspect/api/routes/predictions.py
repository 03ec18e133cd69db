"""The audit trail and its review: GET /predictions (newest first, or the review queue),
/predictions/stats, /predictions/quality, /predictions/{id}, POST /predictions/{id}/review and
GET /predictions/{id}/reviews."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query

from visinspect.api.deps import DriftServiceDep, HistoryServiceDep, ReviewServiceDep, SettingsDep
from visinspect.api.schemas import (
    AccuracyOut,
    ClassAccuracy,
    ClassCount,
    ClassLabel,
    ConfusionOut,
    DayAccuracy,
    DayCount,
    DriftOut,
    PredictionOut,
    PredictionPage,
    QualityOut,
    ReviewIn,
    ReviewOut,
    StatsOut,
    error_responses,
)
from visinspect.api.security import key_name, require_api_key
from visinspect.db.models import PredictionRecord, ReviewRecord
from visinspect.services.drift import parse_duration
from visinspect.services.history import HistoryFilter
from visinspect.services.reviews import Accuracy, ReviewService

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
PredictionId = Annotated[int, Path(ge=1, le=2**63 - 1)]


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
        class_name,
        image_sha256,
        created_after,
        created_before,
        reviewed,
        min_confidence,
        max_confidence,
    )
    least_confident = (order or ("least_confident" if reviewed is False else "newest")) != "newest"
    page = await history.page(where, limit, offset, least_confident, cursor)
    return PredictionPage(
        items=[prediction_out(r, page.reviews.get(r.id), reviews) for r in page.records],
        total=page.total,
        total_exact=page.total_exact,
        next_cursor=page.next_cursor,
        limit=limit,
        offset=offset,
    )


@router.get(
    "/classes",
    response_model=list[ClassLabel],
    summary="The model's classes, by id: what a review's true_class_id may name",
    responses=error_responses(401, 403),
)
async def list_classes(reviews: ReviewServiceDep) -> list[ClassLabel]:
    return [ClassLabel(class_id=i, class_name=name) for i, name in enumerate(reviews.labels)]


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
    "/predictions/quality",
    response_model=QualityOut,
    summary="Accuracy measured by reviews: overall, per class, per day, and the confusions",
    responses=error_responses(401, 403, 422, 503),
)
async def prediction_quality(
    reviews: ReviewServiceDep,
    class_name: ClassName = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    top_classes: Annotated[int, Query(ge=1, le=1000)] = 20,
    top_confusions: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> QualityOut:
    """Over the predictions that match the filters, by the latest review of each."""
    quality = await reviews.quality(
        HistoryFilter(class_name, None, created_after, created_before), top_classes, top_confusions
    )
    return QualityOut(
        overall=AccuracyOut(**_accuracy(quality.overall)),
        by_class=[ClassAccuracy(class_name=n, **_accuracy(a)) for n, a in quality.by_class],
        by_day=[DayAccuracy(day=d, **_accuracy(a)) for d, a in quality.by_day],
        confusions=[
            ConfusionOut.model_validate(c, from_attributes=True) for c in quality.confusions
        ],
    )


@router.get(
    "/predictions/drift",
    response_model=DriftOut,
    summary="Has the stream of images changed? The recent window against a reference",
    responses=error_responses(401, 403, 422, 503),
)
async def prediction_drift(
    drift: DriftServiceDep,
    settings: SettingsDep,
    window: Annotated[
        str | None, Query(description="The recent window: 90m, 24h, 7d (default DRIFT_WINDOW)")
    ] = None,
    reference: Annotated[
        str | None,
        Query(description="The reference window just before it (default DRIFT_REFERENCE)"),
    ] = None,
    until: Annotated[
        datetime | None, Query(description="End of the recent window (default now); no zone: UTC")
    ] = None,
) -> DriftOut:
    """Compared in SQL and NumPy; the defaults, now, also set the drift gauges on /metrics."""
    recent, earlier = window or settings.drift_window, reference or settings.drift_reference
    if until is None and (recent, earlier) == (settings.drift_window, settings.drift_reference):
        result = await drift.watch(parse_duration(recent), parse_duration(earlier))
    else:
        result = await drift.compare(parse_duration(recent), parse_duration(earlier), until)
    return DriftOut.model_validate(result, from_attributes=True)


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
    return prediction_out(record, review, reviews)


@router.post(
    "/predictions/{prediction_id}/review",
    response_model=ReviewOut,
    status_code=201,
    summary="Record a person's verdict on a prediction (the latest one counts)",
    responses=error_responses(401, 403, 404, 422, 503),
)
async def review_prediction(
    reviews: ReviewServiceDep,
    prediction_id: PredictionId,
    body: ReviewIn,
    reviewer: Annotated[str | None, Depends(key_name)],
) -> ReviewOut:
    review = await reviews.review(
        prediction_id, body.verdict, body.true_class_id, body.note, reviewer
    )
    return review_out(review, reviews)


@router.get(
    "/predictions/{prediction_id}/reviews",
    response_model=list[ReviewOut],
    summary="Every review of a prediction, newest first",
    responses=error_responses(401, 403, 404, 422, 503),
)
async def prediction_reviews(
    reviews: ReviewServiceDep, prediction_id: PredictionId
) -> list[ReviewOut]:
    return [review_out(r, reviews) for r in await reviews.history(prediction_id)]


def review_out(review: ReviewRecord, reviews: ReviewService) -> ReviewOut:
    return ReviewOut.model_validate(
        {
            **{k: getattr(review, k) for k in ReviewOut.model_fields if k != "true_class_name"},
            "true_class_name": reviews.class_name(review.true_class_id),
        }
    )


def prediction_out(
    record: PredictionRecord, review: ReviewRecord | None, reviews: ReviewService
) -> PredictionOut:
    out = PredictionOut.model_validate(record)
    return out.model_copy(update={"review": review_out(review, reviews) if review else None})


def _accuracy(figures: Accuracy) -> dict[str, int | float | None]:
    return {"reviewed": figures.reviewed, "correct": figures.correct, "accuracy": figures.accuracy}
