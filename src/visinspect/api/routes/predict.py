"""POST /predict and /predict/batch: classify uploads, store each result before answering."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Annotated

import anyio
import structlog
from fastapi import APIRouter, Depends, File, Query, Request, UploadFile

from visinspect.api.deps import RunnerDep, SettingsDep, WriterDep
from visinspect.api.errors import record_rejection
from visinspect.api.schemas import BatchItem, BatchOut, ErrorDetail, PredictionOut, error_responses
from visinspect.api.security import require_api_key
from visinspect.config import Settings
from visinspect.db.models import PredictionRecord
from visinspect.db.writer import PredictionWriter
from visinspect.errors import RequestTimedOut, TooManyFiles, VisinspectError
from visinspect.inference.runner import Classification, InferenceRunner
from visinspect.logging import request_id_from

router = APIRouter(tags=["predict"], dependencies=[Depends(require_api_key)])
log = structlog.get_logger("visinspect.predict")


@router.post(
    "/predict",
    response_model=PredictionOut,
    summary="Classify an image",
    responses=error_responses(400, 401, 403, 413, 415, 422, 503, 504),
)
async def predict(
    request: Request,
    runner: RunnerDep,
    writer: WriterDep,
    settings: SettingsDep,
    file: Annotated[
        UploadFile,
        File(description="The image: JPEG, PNG, WebP, GIF (one frame), BMP or TIFF"),
    ],
    top_k: Annotated[
        int | None,
        Query(ge=1, le=1000, description="How many classes to return (default DEFAULT_TOP_K)"),
    ] = None,
) -> PredictionOut:
    """Returns the top-k ImageNet classes with softmax confidences.

    The prediction is committed to the database before this answers 200; when the database is
    unavailable the answer is 503 and nothing is stored.
    """
    return await _classify_and_store(request, runner, writer, settings, file, top_k)


@router.post(
    "/predict/batch",
    response_model=BatchOut,
    summary="Classify several images in one request",
    responses=error_responses(401, 403, 413, 422),
)
async def predict_batch(
    request: Request,
    runner: RunnerDep,
    writer: WriterDep,
    settings: SettingsDep,
    files: Annotated[
        list[UploadFile], File(description="Up to MAX_BATCH_FILES images, field name `files`")
    ],
    top_k: Annotated[int | None, Query(ge=1, le=1000)] = None,
) -> BatchOut:
    """Each file gets its own result or its own error: one bad file does not fail the others.
    One row per successful item, committed before this answers."""
    if len(files) > settings.max_batch_files:
        raise TooManyFiles(
            f"{len(files)} files sent; the limit is {settings.max_batch_files} (MAX_BATCH_FILES)"
        )
    outcomes = await asyncio.gather(
        *(_item(request, runner, writer, settings, f, top_k) for f in files)
    )
    return BatchOut(
        items=list(outcomes),
        succeeded=sum(o.prediction is not None for o in outcomes),
        failed=sum(o.error is not None for o in outcomes),
    )


async def _item(
    request: Request,
    runner: InferenceRunner,
    writer: PredictionWriter,
    settings: Settings,
    upload: UploadFile,
    top_k: int | None,
) -> BatchItem:
    try:
        prediction = await _classify_and_store(request, runner, writer, settings, upload, top_k)
    except VisinspectError as exc:
        status = record_rejection(request, exc)
        detail = ErrorDetail(
            code=exc.code, message=exc.message, request_id=request_id_from(request.scope)
        )
        return BatchItem(filename=upload.filename, status=status, error=detail)
    return BatchItem(filename=upload.filename, status=200, prediction=prediction)


async def _classify_and_store(
    request: Request,
    runner: InferenceRunner,
    writer: PredictionWriter,
    settings: Settings,
    upload: UploadFile,
    top_k: int | None,
) -> PredictionOut:
    data = await upload.read()
    started = time.perf_counter()
    try:
        with anyio.fail_after(settings.request_timeout_s):
            classification = await runner.classify(data, top_k or settings.default_top_k)
    except TimeoutError:
        raise RequestTimedOut(
            f"classification took longer than {settings.request_timeout_s} s (REQUEST_TIMEOUT_S); "
            "nothing was stored"
        ) from None
    latency_ms = (time.perf_counter() - started) * 1000
    record = _new_record(request, runner, classification, upload, len(data), latency_ms)
    stored = await writer.store(record)
    top = classification.predictions[0]
    log.info(
        "prediction.stored",
        record_id=stored.id,
        class_name=top.class_name,
        confidence=round(top.confidence, 4),
        latency_ms=round(latency_ms, 2),
        decode_ms=round(classification.decode_ms, 2),
        inference_ms=round(classification.inference_ms, 2),
    )
    return PredictionOut.from_record(stored)


def _new_record(
    request: Request,
    runner: InferenceRunner,
    classification: Classification,
    upload: UploadFile,
    size: int,
    latency_ms: float,
) -> PredictionRecord:
    top = classification.predictions[0]
    return PredictionRecord(
        created_at=datetime.now(UTC),
        request_id=request_id_from(request.scope),
        model_name=runner.classifier.model_name,
        model_version=runner.classifier.model_version,
        inference_backend=runner.classifier.backend_name,
        class_id=top.class_id,
        class_name=top.class_name,
        confidence=top.confidence,
        top_k=[
            {"class_id": p.class_id, "class_name": p.class_name, "confidence": p.confidence}
            for p in classification.predictions
        ],
        image_sha256=classification.image_sha256,
        image_width=classification.image_width,
        image_height=classification.image_height,
        image_format=classification.image_format,
        image_bytes=size,
        filename=(upload.filename or None) and upload.filename[:255],
        latency_ms=latency_ms,
    )
