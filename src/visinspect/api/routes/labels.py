"""Label sets and labels: POST/GET /label-sets, GET /label-sets/{name}, POST
/label-sets/{name}/classes, POST /predictions/{id}/labels; backed by `services/labels.py`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from visinspect.api.deps import LabelServiceDep
from visinspect.api.params import LabelSetName, PredictionId
from visinspect.api.schemas import (
    ClassesIn,
    LabelIn,
    LabelOut,
    LabelSetIn,
    LabelSetOut,
    error_responses,
)
from visinspect.api.security import key_name, require_api_key
from visinspect.services.labels import LabelSet

router = APIRouter(tags=["teaching"], dependencies=[Depends(require_api_key)])


@router.post(
    "/label-sets",
    response_model=LabelSetOut,
    status_code=201,
    summary="Define a team's own classes (at most MAX_LABEL_SETS sets)",
    responses=error_responses(401, 403, 422, 503),
)
async def create_label_set(
    labels: LabelServiceDep, body: LabelSetIn, by: Annotated[str | None, Depends(key_name)]
) -> LabelSetOut:
    return label_set_out(await labels.create(body.name, body.classes, body.description, by))


@router.get(
    "/label-sets",
    response_model=list[LabelSetOut],
    summary="The label sets by name, with their labels per class, a page at a time",
    description="At most `limit` sets, from after the set named `after`. When there are more, "
    'the `Link` header names the next page (`rel="next"`, RFC 8288).',
    responses=error_responses(401, 403, 422, 503),
)
async def list_label_sets(
    labels: LabelServiceDep,
    request: Request,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> list[LabelSetOut]:
    found = await labels.page(limit + 1, after)
    if len(found) > limit:
        found = found[:limit]
        following = request.url.include_query_params(limit=limit, after=found[-1].record.name)
        response.headers["Link"] = f'<{following.path}?{following.query}>; rel="next"'
    return [label_set_out(s) for s in found]


@router.get(
    "/label-sets/{name}",
    response_model=LabelSetOut,
    summary="One label set, with its labels per class",
    responses=error_responses(401, 403, 404, 503),
)
async def get_label_set(labels: LabelServiceDep, name: LabelSetName) -> LabelSetOut:
    return label_set_out(await labels.get(name))


@router.post(
    "/label-sets/{name}/classes",
    response_model=LabelSetOut,
    summary="Add classes to a label set (existing ones are never renamed or dropped)",
    responses=error_responses(401, 403, 404, 422, 503),
)
async def add_classes(labels: LabelServiceDep, name: LabelSetName, body: ClassesIn) -> LabelSetOut:
    return label_set_out(await labels.add_classes(name, body.classes))


@router.post(
    "/predictions/{prediction_id}/labels",
    response_model=LabelOut,
    status_code=201,
    summary="Label a prediction in a label set (only added; the latest one counts)",
    responses=error_responses(401, 403, 404, 422, 503),
)
async def label_prediction(
    labels: LabelServiceDep,
    prediction_id: PredictionId,
    body: LabelIn,
    labeller: Annotated[str | None, Depends(key_name)],
) -> LabelOut:
    label = await labels.label(prediction_id, body.label_set, body.class_name, labeller)
    return LabelOut(
        id=label.id,
        prediction_id=label.prediction_id,
        label_set=body.label_set,
        class_name=label.class_name,
        labeller=label.labeller,
        created_at=label.created_at,
    )


def label_set_out(found: LabelSet) -> LabelSetOut:
    record = found.record
    return LabelSetOut(
        name=record.name,
        description=record.description,
        classes=list(record.classes),
        counts=found.counts,
        labelled=found.labelled,
        created_at=record.created_at,
        created_by=record.created_by,
    )
