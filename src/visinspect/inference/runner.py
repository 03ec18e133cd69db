"""The inference pipeline: decode in a worker process, then classify in shared micro-batches.

Nothing here runs on the event loop: decoding and preprocessing run in the supervised decoder
processes (`decoders.py`: bounded in time and memory), the network in the batcher's model thread.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from visinspect.errors import ClientGone
from visinspect.inference.anomaly import DetectorAnswer, LoadedDetector
from visinspect.inference.batcher import MicroBatcher, Scan
from visinspect.inference.classifier import Classifier, ModelIdentity, Prediction
from visinspect.inference.decoders import DecoderPool
from visinspect.tracing import Timeline


@dataclass(frozen=True, slots=True)
class Classification:
    """One image's top-k, the model that produced it, and what the image was."""

    model: ModelIdentity
    predictions: list[Prediction]
    image_sha256: str
    image_bytes: int
    image_width: int
    image_height: int
    image_format: str
    decode_ms: float
    inference_ms: float
    # The pooled features of the same forward pass (float32), for the heads and to be kept.
    embedding: np.ndarray | None = None
    # The upload and its thumbnail when the decoders make them (images are kept), else None.
    original: bytes | None = None
    thumbnail: bytes | None = None
    # The detectors' answers on the whole frame, when detectors were asked to answer.
    anomalies: tuple[DetectorAnswer, ...] = ()


class InferenceRunner:
    def __init__(
        self, classifier: Classifier, batcher: MicroBatcher, decoders: DecoderPool
    ) -> None:
        self.classifier = classifier
        self.batcher = batcher
        self.decoders = decoders

    async def classify(
        self,
        read: Callable[[], Awaitable[bytes]],
        top_k: int,
        deadline: float | None,
        gone: Callable[[], Awaitable[bool]],
        timeline: Timeline,
        detectors: tuple[LoadedDetector, ...] = (),
    ) -> Classification:
        """Top-k classes of one uploaded image (read when a decoder is free); raises InvalidImage
        subclasses for bad input, Overloaded when the model's queue is full, DeadlineUnreachable
        when the work ahead outlasts `deadline` (event-loop time; checked before decoding and
        again before queueing) and ClientGone when `gone()` says the client left meanwhile.
        `timeline` receives when each phase began and ended (for the trace, when traced).
        `detectors` answer on the upload's whole frame, in the same batch as the model."""
        self.batcher.check_deadline(deadline)
        timeline.decode_started = time.time_ns()
        decoded = await self.decoders.decode(read, frame=bool(detectors))
        timeline.decoded = time.time_ns()
        if await gone():
            raise ClientGone("the client closed the connection before its image reached the model")
        decoded_at = time.perf_counter()
        image = decoded.image
        scan = None
        if detectors and image.frame is not None:
            scan = Scan(image.frame, image.width, image.height, detectors)
        classified = await self.batcher.classify(image.crop, top_k, deadline, timeline, scan)
        return Classification(
            model=self.classifier.identity,
            predictions=classified.predictions,
            embedding=classified.embedding,
            image_sha256=decoded.sha256,
            image_bytes=decoded.size,
            image_width=decoded.image.width,
            image_height=decoded.image.height,
            image_format=decoded.image.format,
            decode_ms=decoded.decode_ms,
            inference_ms=(time.perf_counter() - decoded_at) * 1000,
            original=decoded.original,
            thumbnail=decoded.image.thumbnail,
            anomalies=classified.anomalies,
        )
