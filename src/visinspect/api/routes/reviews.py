"""Human review: POST /predictions/{id}/review, GET /predictions/{id}/reviews, the accuracy the
reviews measure (GET /predictions/quality) and the classes a review may name (GET /classes),
backed by `services/reviews.py`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from visinspect.api.deps import ReviewServiceDep
from visinspect.api.params import ClassAndTime, PredictionId, TopClasses
from visinspect.api.schemas import (
    AccuracyOut,
    ClassAccuracy,
    ClassLabel,
    ConfusionOut,
    DayAccuracy,
    QualityOut,
    ReviewIn,
    ReviewOut,
    error_responses,
)
from visinspect.api.security import key_name, require_api_key
from visinspect.services.reviews import Accuracy

router = APIRouter(tags=["predictions"], dependencies=[Depends(require_api_key)])


@router.get(
    "/classes",
    response_model=list[ClassLabel],
    summary="The model's classes, by id: what a review's true_class_id may name",
    responses=error_responses(401, 403),
)
async def list_classes(reviews: ReviewServiceDep) -> list[ClassLabel]:
    return [ClassLabel(class_id=i, class_name=name) for i, name in enumerate(reviews.labels)]


@router.get(
    "/predictions/quality",
    response_model=QualityOut,
    summary="Accuracy measured by reviews: overall, per class, per day, and the confusions",
    responses=error_responses(401, 403, 422, 503),
)
async def prediction_quality(
    reviews: ReviewServiceDep,
    where: ClassAndTime,
    top_classes: TopClasses = 20,
    top_confusions: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> QualityOut:
    """Over the predictions that match the filters, by the latest review of each."""
    quality = await reviews.quality(where, top_classes, top_confusions)
    return QualityOut(
        overall=AccuracyOut(**_accuracy(quality.overall)),
        by_class=[ClassAccuracy(class_name=n, **_accuracy(a)) for n, a in quality.by_class],
        by_day=[DayAccuracy(day=d, **_accuracy(a)) for d, a in quality.by_day],
        confusions=[
            ConfusionOut.model_validate(c, from_attributes=True) for c in quality.confusions
        ],
    )


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
    return ReviewOut.model_validate(review, context={"labels": reviews.labels})


REVIEWS_PAGE_MAX = 200


@router.get(
    "/predictions/{prediction_id}/reviews",
    response_model=list[ReviewOut],
    summary="A prediction's reviews, newest first, a page at a time",
    responses=error_responses(401, 403, 404, 422, 503),
)
async def prediction_reviews(
    reviews: ReviewServiceDep,
    prediction_id: PredictionId,
    limit: Annotated[int, Query(ge=1, le=REVIEWS_PAGE_MAX, description="Reviews per page")] = 50,
    before: Annotated[
        int | None,
        Query(
            ge=1,
            le=2**63 - 1,
            description="Only reviews older than this review id: the last id of the previous page",
        ),
    ] = None,
) -> list[ReviewOut]:
    context = {"labels": reviews.labels}
    page = await reviews.history(prediction_id, limit, before)
    return [ReviewOut.model_validate(r, context=context) for r in page]


def _accuracy(figures: Accuracy) -> dict[str, int | float | None]:
    return {"reviewed": figures.reviewed, "correct": figures.correct, "accuracy": figures.accuracy}
