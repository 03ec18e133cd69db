"""Heads: train (POST /label-sets/{name}/heads; a detector: .../detectors), list, audit, quality
and the "needs a person" queue of a label set; shadow, promote, rollback and retire a version of
either kind (POST /heads/{id}/...); a prediction's heat map (GET /predictions/{id}/anomaly-map);
backed by `services/heads.py`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from visinspect.api.deps import HeadServiceDep, SettingsDep
from visinspect.api.params import HeadId, LabelSetName, PredictionId
from visinspect.api.schemas import (
    AnomalyItemOut,
    AnomalyPage,
    DetectorQualityOut,
    DetectorTrainIn,
    HeadEventOut,
    HeadOut,
    LabelSetQualityOut,
    QueueItemOut,
    QueuePage,
    VersionQualityOut,
    error_responses,
)
from visinspect.api.security import key_name, require_api_key

router = APIRouter(tags=["teaching"], dependencies=[Depends(require_api_key)])
Actor = Annotated[str | None, Depends(key_name)]


@router.post(
    "/label-sets/{name}/heads",
    response_model=HeadOut,
    status_code=201,
    summary="Train the set's next head version on its labels' kept embeddings (a candidate)",
    responses=error_responses(401, 403, 404, 409, 422, 501, 503, 504),
)
async def train_head(
    heads: HeadServiceDep, name: LabelSetName, by: Actor, request: Request
) -> HeadOut:
    """The training process is stopped when the client leaves before its answer."""
    return head_out(await heads.train(name, by, request.is_disconnected), name)


@router.get(
    "/label-sets/{name}/heads",
    response_model=list[HeadOut],
    summary="The newest versions of the set's head, newest first, without their confusion matrix",
    description="At most `limit` versions; the confusion matrix (classes x classes: megabytes "
    "for a thousand classes) is in `GET /heads/{id}` only.",
    responses=error_responses(401, 403, 404, 422, 503),
)
async def list_heads(
    heads: HeadServiceDep,
    name: LabelSetName,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[HeadOut]:
    return [head_out(h, name, matrices=False) for h in await heads.versions(name, limit)]


@router.post(
    "/label-sets/{name}/detectors",
    response_model=HeadOut,
    status_code=201,
    summary="Train the set's next detector version on good images only (a candidate)",
    description="The good images are the kept uploads (KEEP_IMAGES) of `prediction_ids`, or "
    "of the newest predictions whose latest label in the set is `good_class`. Training runs "
    "in a child process bounded like a head's (HEAD_TRAIN_TIMEOUT_S, "
    "HEAD_TRAIN_MAX_MEMORY_MB), one at a time per set; the version then takes the heads' "
    "lifecycle: POST /heads/{id}/shadow, promote, rollback, retire.",
    responses=error_responses(401, 403, 404, 409, 422, 501, 503, 504),
)
async def train_detector(
    heads: HeadServiceDep,
    name: LabelSetName,
    by: Actor,
    request: Request,
    body: DetectorTrainIn | None = None,
) -> HeadOut:
    """The training process is stopped when the client leaves before its answer."""
    wanted = body or DetectorTrainIn()
    trained = await heads.train_detector(
        name,
        wanted.good_class,
        wanted.prediction_ids,
        by,
        request.is_disconnected,
        false_reject=wanted.false_reject,
    )
    return head_out(trained, name)


@router.get(
    "/label-sets/{name}/detectors",
    response_model=list[HeadOut],
    summary="The newest versions of the set's detector, newest first",
    responses=error_responses(401, 403, 404, 422, 503),
)
async def list_detectors(
    heads: HeadServiceDep,
    name: LabelSetName,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[HeadOut]:
    return [head_out(h, name) for h in await heads.versions(name, limit, "detector")]


@router.get(
    "/label-sets/{name}/events",
    response_model=list[HeadEventOut],
    summary="The audit trail of the set's heads: who trained, shadowed, promoted, rolled back",
    responses=error_responses(401, 403, 404, 503),
)
async def head_events(heads: HeadServiceDep, name: LabelSetName) -> list[HeadEventOut]:
    return [
        HeadEventOut.model_validate(event).model_copy(update={"kind": kind})
        for event, kind in await heads.events(name)
    ]


@router.get(
    "/label-sets/{name}/quality",
    response_model=LabelSetQualityOut,
    summary="Every version measured on the labels given after it was trained",
    responses=error_responses(401, 403, 404, 503),
)
async def label_set_quality(
    heads: HeadServiceDep, settings: SettingsDep, name: LabelSetName
) -> LabelSetQualityOut:
    versions = [
        VersionQualityOut(
            head_id=q.head.id,
            version=q.head.version,
            status=q.head.status,
            labels=q.labels,
            correct=q.correct,
            accuracy=q.accuracy,
            macro_f1=q.macro_f1,
            decided=q.decided,
            decided_share=q.decided_share,
            decided_precision=q.decided_precision,
            beats_active=q.beats_active,
        )
        for q in await heads.quality(name)
    ]
    detectors = [
        DetectorQualityOut(
            head_id=q.head.id,
            version=q.head.version,
            status=q.head.status,
            good=q.good,
            false_rejects=q.false_rejects,
            false_reject_rate=q.false_reject_rate,
            defective=q.defective,
            escapes=q.escapes,
            escape_rate=q.escape_rate,
        )
        for q in await heads.detector_quality(name)
    ]
    return LabelSetQualityOut(
        label_set=name,
        compare_min_labels=settings.head_compare_min_labels,
        versions=versions,
        detectors=detectors,
    )


@router.get(
    "/label-sets/{name}/queue",
    response_model=QueuePage,
    summary="Needs a person: the active head's undecided answers, least confident first",
    responses=error_responses(401, 403, 404, 422, 503),
)
async def needs_a_person(
    heads: HeadServiceDep,
    name: LabelSetName,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    cursor: Annotated[str | None, Query(max_length=256)] = None,
) -> QueuePage:
    page = await heads.queue(name, limit, cursor)
    return QueuePage(
        items=[
            QueueItemOut(
                prediction_id=a.prediction_id,
                head_version=page.head.version,
                class_name=a.class_name,
                confidence=a.confidence,
                created_at=a.created_at,
            )
            for a in page.answers
        ],
        next_cursor=page.next_cursor,
    )


@router.get(
    "/label-sets/{name}/anomalies",
    response_model=AnomalyPage,
    summary="The inspection queue: the active detector's anomalous answers, most anomalous first",
    description="Answers no label of the set follows yet. Label one with the good class "
    "(a false reject) or a defect class (`POST /predictions/{id}/labels`): it leaves the queue, "
    "and the detector's quality counts it.",
    responses=error_responses(401, 403, 404, 422, 503),
)
async def inspection_queue(
    heads: HeadServiceDep,
    name: LabelSetName,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    cursor: Annotated[str | None, Query(max_length=256)] = None,
) -> AnomalyPage:
    page = await heads.anomalies(name, limit, cursor)
    return AnomalyPage(
        items=[
            AnomalyItemOut(
                prediction_id=a.prediction_id,
                detector_version=page.head.version,
                score=a.confidence,
                region=a.region,
                created_at=a.created_at,
            )
            for a in page.answers
        ],
        next_cursor=page.next_cursor,
    )


def _change_route(action: str, summary: str) -> None:
    @router.post(
        f"/heads/{{head_id}}/{action}",
        response_model=HeadOut,
        summary=summary,
        responses=error_responses(401, 403, 404, 409, 422, 503),
        name=f"{action}_head",
    )
    async def change(heads: HeadServiceDep, head_id: HeadId, by: Actor) -> HeadOut:
        changed = await getattr(heads, action)(head_id, by)
        return head_out(changed, await heads.set_name(changed))


_change_route("shadow", "Run a version on live traffic, recorded but not returned")
_change_route("promote", "Make a version the set's active head (the previous one is retired)")
_change_route("rollback", "Give the active version's place back to the one it replaced")
_change_route("retire", "Stop serving a version")


@router.get(
    "/heads/{head_id}",
    response_model=HeadOut,
    summary="One head version",
    responses=error_responses(401, 403, 404, 503),
)
async def get_head(heads: HeadServiceDep, head_id: HeadId) -> HeadOut:
    found = await heads.get(head_id)
    return head_out(found, await heads.set_name(found))


def head_out(head: object, label_set: str, matrices: bool = True) -> HeadOut:
    manifest = getattr(head, "manifest", {})
    metrics = manifest.get("metrics", {})
    if getattr(head, "kind", "classifier") == "detector":
        facts = ("method", "frame", "grid", "threshold", "patch_graph_sha256")
        metrics = {k: manifest[k] for k in facts if k in manifest}
    if not matrices:
        metrics = {k: v for k, v in metrics.items() if k != "confusion"}
    return HeadOut.model_validate(
        {
            **{k: getattr(head, k) for k in HeadOut.model_fields if hasattr(head, k)},
            "label_set": label_set,
            "metrics": metrics,
            "training": manifest.get("training", {}),
            "libraries": manifest.get("libraries", {}),
        }
    )


@router.get(
    "/predictions/{prediction_id}/anomaly-map",
    summary="A detector's heat map of a prediction, as a PNG to lay over its image",
    description="Transparent where the image is as good as the good images, yellow to red "
    "towards twice the threshold; the image's aspect ratio, at most 1,024 pixels a side (stretch "
    "it over the image). The newest active detector's, or `detector_id`'s.",
    response_class=Response,
    responses={
        200: {"description": "RGBA PNG", "content": {"image/png": {}}},
        **error_responses(401, 403, 404, 422, 503),
    },
    tags=["predictions"],
)
async def anomaly_map(
    heads: HeadServiceDep,
    prediction_id: PredictionId,
    detector_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
) -> Response:
    png = await heads.anomaly_map(prediction_id, detector_id)
    return Response(
        png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"}
    )
