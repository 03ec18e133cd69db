"""Classify and record: the use case behind POST /predict, /predict/batch and `visinspect classify`.

bytes -> classification (decode threads, micro-batched model) -> record -> committed row, with the
timeout and the per-file outcomes of a batch decided here, once. A returned record is committed;
anything else is a `VisinspectError` that says why nothing was stored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio
import structlog

from visinspect.context import RequestContext
from visinspect.db import embeddings
from visinspect.db.tables import PredictionRecord
from visinspect.db.writer import PredictionWriter
from visinspect.errors import InvalidLabelSet, RequestTimedOut, TooManyFiles, VisinspectError
from visinspect.inference.runner import Classification, InferenceRunner
from visinspect.services.heads import HeadRegistry, answer_rows
from visinspect.services.images import ImageService
from visinspect.text import printable
from visinspect.tracing import Timeline, Tracing

log = structlog.get_logger("visinspect.predict")

MAX_FILENAME_CHARS = 255  # the column's width
# Classes a row keeps of its top-k (POST /predict answers with all it was asked for, up to 1,000):
# the history sends them with every row, and 1,000 a row made a 200-row page 14 MB and a row
# 70 KB. Twenty is more than any view shows; the kept embedding holds the rest.
STORED_TOP_K = 20

# What became of one file of a batch: its committed record, or why nothing was stored.
Outcome = PredictionRecord | VisinspectError


@dataclass(frozen=True, slots=True)
class Upload:
    """One image as received, and the name the client gave it, if any.

    Its bytes are read (`read`) only when a decoder is free to take them: uploads waiting for one
    stay where the server spooled them (in memory up to 1 MiB each, on disk beyond), so the
    memory of the uploads in flight is bounded by the decoders, not by the clients.
    """

    read: Callable[[], Awaitable[bytes]]
    filename: str | None = None

    @classmethod
    def from_bytes(cls, data: bytes, filename: str | None = None) -> Upload:
        async def read() -> bytes:
            return data

        return cls(read, filename)


class PredictService:
    def __init__(
        self,
        runner: InferenceRunner,
        writer: PredictionWriter,
        images: ImageService | None = None,
        tracing: Tracing | None = None,
        *,
        timeout_s: float,
        default_top_k: int,
        max_batch_files: int,
        keep_embeddings: bool = True,
        heads: HeadRegistry | None = None,
    ) -> None:
        self.runner = runner
        self.writer = writer
        self.images = images
        self.tracing = tracing  # None: traces are off
        self.timeout_s = timeout_s
        self.default_top_k = default_top_k
        self.max_batch_files = max_batch_files
        self.keep_embeddings = keep_embeddings
        self.heads = heads  # None: no heads are served (the CLI's in-process classify)

    async def classify_and_record(
        self, upload: Upload, context: RequestContext
    ) -> PredictionRecord:
        """The committed record of one classified upload (it has its id). Work that cannot
        finish within the request's time limit is refused at once; an image whose client has
        left is dropped before the model spends time on it."""
        timeline = Timeline(started=time.time_ns())
        self._check_label_set(context)
        try:
            stored = await self._classify_and_record(upload, context, timeline)
        except VisinspectError as exc:
            if self.tracing is not None:
                self.tracing.record_classification(timeline, context.request_id, {}, exc.code)
            raise
        if self.tracing is not None:
            self.tracing.record_classification(
                timeline,
                context.request_id,
                {
                    "visinspect.prediction_id": stored.id,
                    "visinspect.class_name": stored.class_name,
                    "visinspect.confidence": stored.confidence,
                    "visinspect.image_bytes": stored.image_bytes,
                },
            )
        return stored

    def _check_label_set(self, context: RequestContext) -> None:
        """`?label_set=` names a set with an active head, or the request is refused before any
        work is spent on it."""
        wanted = context.label_set
        if wanted is not None and (self.heads is None or wanted not in self.heads.active_sets):
            raise InvalidLabelSet(
                f"no active head answers for label set {wanted!r}: promote a version of it "
                "(POST /heads/{id}/promote), or leave label_set out"
            )

    async def classify_many(self, uploads: list[Upload], context: RequestContext) -> list[Outcome]:
        """One outcome per upload, in order: its committed record, or the error that kept it out.
        One bad file does not fail the others; too many files fail the whole request."""
        self._check_label_set(context)
        if len(uploads) > self.max_batch_files:
            raise TooManyFiles(
                f"{len(uploads)} files sent; the limit is {self.max_batch_files} (MAX_BATCH_FILES)"
            )
        return list(await asyncio.gather(*(self._outcome(u, context) for u in uploads)))

    async def _outcome(self, upload: Upload, context: RequestContext) -> Outcome:
        try:
            return await self.classify_and_record(upload, context)
        except VisinspectError as exc:
            return exc

    async def _classify_and_record(
        self, upload: Upload, context: RequestContext, timeline: Timeline
    ) -> PredictionRecord:
        started = time.perf_counter()
        classification = await self._classify(upload.read, context, timeline)
        latency_ms = (time.perf_counter() - started) * 1000
        record = new_record(classification, upload, context.request_id, latency_ms)
        if self.images is not None:
            record.image_kept = await self.images.keep(
                classification, context.request_id, context.key_name
            )
        embedding = None
        if self.keep_embeddings and classification.embedding is not None:
            embedding = embeddings.encode(
                classification.embedding, record.created_at, record.model_version
            )
        answered = self.heads.answers(classification.embedding) if self.heads else []
        record.heads = tuple(
            answer
            for _, answer in answered
            if not answer.shadow and context.label_set in (None, answer.label_set)
        )
        record.anomalies = tuple(a for a in classification.anomalies if not a.served.shadow)
        timeline.write_started = time.time_ns()
        stored = await self.writer.store(
            record,
            embedding,
            answer_rows(answered, record.created_at, classification.anomalies),
        )
        timeline.written = time.time_ns()
        log.info(
            "prediction.stored",
            record_id=stored.id,
            class_name=stored.class_name,
            confidence=round(stored.confidence, 4),
            latency_ms=round(latency_ms, 2),
            decode_ms=round(classification.decode_ms, 2),
            inference_ms=round(classification.inference_ms, 2),
        )
        return stored

    async def _classify(
        self, read: Callable[[], Awaitable[bytes]], context: RequestContext, timeline: Timeline
    ) -> Classification:
        own = context.timeout_s
        limit_s = self.timeout_s if own is None else min(own, self.timeout_s)
        deadline = asyncio.get_running_loop().time() + limit_s
        top_k = context.top_k or self.default_top_k
        detectors = self.heads.detectors_for(context.label_set) if self.heads else ()
        try:
            with anyio.fail_after(limit_s):
                return await self.runner.classify(
                    read, top_k, deadline, context.gone, timeline, detectors
                )
        except TimeoutError:
            which = "REQUEST_TIMEOUT_S" if limit_s == self.timeout_s else "X-Request-Timeout-Ms"
            raise RequestTimedOut(
                f"classification took longer than {limit_s:g} s ({which}); nothing was stored"
            ) from None


def new_record(
    classification: Classification, upload: Upload, request_id: str, latency_ms: float
) -> PredictionRecord:
    top = classification.predictions[0]
    answered = [
        {"class_id": p.class_id, "class_name": p.class_name, "confidence": p.confidence}
        for p in classification.predictions
    ]
    record = PredictionRecord(
        created_at=datetime.now(UTC),
        request_id=request_id,
        model_name=classification.model.name,
        model_version=classification.model.version,
        backend=classification.model.backend,
        precision=classification.model.precision,
        class_id=top.class_id,
        class_name=top.class_name,
        confidence=top.confidence,
        predictions=answered[:STORED_TOP_K],
        image_sha256=classification.image_sha256,
        image_width=classification.image_width,
        image_height=classification.image_height,
        image_format=classification.image_format,
        image_bytes=classification.image_bytes,
        filename=clean_filename(upload.filename),
        latency_ms=latency_ms,
        decode_ms=classification.decode_ms,
        inference_ms=classification.inference_ms,
    )
    if len(answered) > STORED_TOP_K:
        record.answered = answered
    return record


def clean_filename(name: str | None) -> str | None:
    """The name as safe to store and show: no directory part, no control or format characters
    (NUL, bidi overrides: PostgreSQL refuses NUL, a page would render the rest), at most 255
    characters. None when nothing is left."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    kept = printable(base).strip()
    return kept[:MAX_FILENAME_CHARS] or None
