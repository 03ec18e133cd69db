"""The inference pipeline: decode in worker threads, then classify in shared micro-batches.

Nothing here runs on the event loop: decoding and preprocessing run in a bounded pool of worker
threads (Pillow and NumPy release the GIL), the network in the batcher's model thread.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import anyio
import anyio.to_thread

from visinspect.inference.batcher import MicroBatcher
from visinspect.inference.model import Classifier, ModelIdentity, Prediction
from visinspect.inference.preprocess import DecodedImage, preprocess


@dataclass(frozen=True, slots=True)
class Classification:
    """One image's top-k, the model that produced it, and what the image was."""

    model: ModelIdentity
    predictions: list[Prediction]
    image_sha256: str
    image_width: int
    image_height: int
    image_format: str
    decode_ms: float
    inference_ms: float


class InferenceRunner:
    def __init__(
        self,
        classifier: Classifier,
        batcher: MicroBatcher,
        max_image_pixels: int,
        decode_threads: int,
    ) -> None:
        self.classifier = classifier
        self.batcher = batcher
        self.max_image_pixels = max_image_pixels
        self._decoders = anyio.CapacityLimiter(decode_threads)

    async def classify(self, data: bytes, top_k: int) -> Classification:
        """Top-k classes of one uploaded image; raises InvalidImage subclasses for bad input and
        Overloaded when the model's queue is full."""
        started = time.perf_counter()
        decoded, digest = await anyio.to_thread.run_sync(self._decode, data, limiter=self._decoders)
        decoded_at = time.perf_counter()
        predictions = await self.batcher.classify(decoded.pixels, top_k)
        return Classification(
            model=self.classifier.identity,
            predictions=predictions,
            image_sha256=digest,
            image_width=decoded.width,
            image_height=decoded.height,
            image_format=decoded.format,
            decode_ms=(decoded_at - started) * 1000,
            inference_ms=(time.perf_counter() - decoded_at) * 1000,
        )

    def _decode(self, data: bytes) -> tuple[DecodedImage, str]:
        decoded = preprocess(data, self.classifier.preprocessing, self.max_image_pixels)
        return decoded, hashlib.sha256(data).hexdigest()
