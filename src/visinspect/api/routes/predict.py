"""POST /predict and /predict/batch: HTTP in, `PredictService` calls, HTTP out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, File, Header, Query, Request, UploadFile

from visinspect.api.deps import PredictServiceDep
from visinspect.api.error_handlers import public_message, record_rejection
from visinspect.api.middleware import request_id_from
from visinspect.api.schemas import BatchItem, BatchOut, ErrorDetail, PredictionOut, error_responses
from visinspect.api.security import key_name, require_api_key
from visinspect.context import RequestContext
from visinspect.errors import InvalidRequest, VisinspectError
from visinspect.services.predict import Outcome, Upload

router = APIRouter(tags=["predict"], dependencies=[Depends(require_api_key)])

TopK = Annotated[
    int | None,
    Query(ge=1, le=1000, description="How many classes to return (default DEFAULT_TOP_K)"),
]
LabelSetQuery = Annotated[
    str | None,
    Query(
        max_length=64,
        description="Answer with this label set's active head only (422 when it has none); "
        "without it, every active head answers",
    ),
]
TimeoutMs = Annotated[
    int | None,
    Header(
        alias="X-Request-Timeout-Ms",
        ge=1,
        le=3_600_000,
        description="This request's own deadline in ms, counted once the upload is received "
        "(capped by REQUEST_TIMEOUT_S): when the images already waiting for the model would "
        "outlast it, the answer is 503 `deadline_unreachable` at once, with Retry-After.",
    ),
]


@router.post(
    "/predict",
    response_model=PredictionOut,
    summary="Classify an image",
    responses=error_responses(400, 401, 403, 413, 415, 422, 500, 503, 504),
)
async def predict(
    request: Request,
    service: PredictServiceDep,
    file: Annotated[
        UploadFile,
        File(description="The image: JPEG, PNG, WebP, GIF (one frame), BMP or TIFF"),
    ],
    top_k: TopK = None,
    timeout_ms: TimeoutMs = None,
    label_set: LabelSetQuery = None,
) -> PredictionOut:
    """Returns the top-k ImageNet classes with softmax confidences.

    The prediction is committed to the database before this answers 200; when the database is
    unavailable the answer is 503 and nothing is stored.
    """
    if len((await request.form()).getlist("file")) > 1:  # parsed already: this reads the cache
        raise InvalidRequest("send exactly one `file` field; POST /predict/batch takes several")
    async with _context(request, top_k, timeout_ms, label_set) as context:
        record = await service.classify_and_record(_upload(file), context)
    return PredictionOut.model_validate(record)


@router.post(
    "/predict/batch",
    response_model=BatchOut,
    summary="Classify several images in one request",
    responses=error_responses(401, 403, 413, 422),
)
async def predict_batch(
    request: Request,
    service: PredictServiceDep,
    files: Annotated[
        list[UploadFile], File(description="Up to MAX_BATCH_FILES images, field name `files`")
    ],
    top_k: TopK = None,
    timeout_ms: TimeoutMs = None,
    label_set: LabelSetQuery = None,
) -> BatchOut:
    """Each file gets its own result or its own error: one bad file does not fail the others.
    One row per successful item, committed before this answers."""
    uploads = [_upload(f) for f in files]
    async with _context(request, top_k, timeout_ms, label_set) as context:
        outcomes = await service.classify_many(uploads, context)
    items = [_item(request, f.filename, o) for f, o in zip(files, outcomes, strict=True)]
    return BatchOut(
        items=items,
        succeeded=sum(i.prediction is not None for i in items),
        failed=sum(i.error is not None for i in items),
    )


@contextlib.asynccontextmanager
async def _context(
    request: Request, top_k: int | None, timeout_ms: int | None, label_set: str | None
) -> AsyncIterator[RequestContext]:
    """The request's terms, with `gone()` telling whether the client has closed its connection.
    The upload has been read by now, so the next message the server delivers is the disconnect;
    a task waits for it, since the server notices a closed connection only while someone waits
    to receive (a one-off, non-blocking look misses it: measured with a real server)."""

    async def listen() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    listener = asyncio.get_running_loop().create_task(listen())

    async def gone() -> bool:
        await asyncio.sleep(0)  # let the listener take what has arrived
        return listener.done()

    timeout_s = None if timeout_ms is None else timeout_ms / 1000
    caller = await key_name(request)  # whose share of the image store a kept upload takes
    try:
        yield RequestContext(
            request_id_from(request.scope), top_k, timeout_s, gone, label_set, caller
        )
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


def _upload(file: UploadFile) -> Upload:
    return Upload(file.read, file.filename)  # read when a decoder is free


def _item(request: Request, filename: str | None, outcome: Outcome) -> BatchItem:
    """What /predict would have answered for this file alone."""
    if isinstance(outcome, VisinspectError):
        status = record_rejection(request, outcome)
        detail = ErrorDetail(
            code=outcome.code,
            message=public_message(outcome, status),
            request_id=request_id_from(request.scope),
        )
        return BatchItem(filename=filename, status=status, error=detail)
    return BatchItem(
        filename=filename, status=200, prediction=PredictionOut.model_validate(outcome)
    )
