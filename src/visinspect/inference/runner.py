"""Run decoding and the network off the event loop.

Decoding runs in AnyIO's worker threads (many at once; Pillow releases the GIL). The network runs
in one dedicated thread: PyTorch already spreads one forward pass over every core, so two passes at
once would only fight over them.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import anyio.to_thread

from visinspect.inference.model import Classifier, Prediction
from visinspect.inference.preprocess import DecodedImage, preprocess


@dataclass(frozen=True, slots=True)
class Classification:
    predictions: list[Prediction]
    image_sha256: str
    image_width: int
    image_height: int
    image_format: str
    inference_ms: float


class InferenceRunner:
    def __init__(self, classifier: Classifier, max_image_pixels: int) -> None:
        self.classifier = classifier
        self.max_image_pixels = max_image_pixels
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    async def classify(self, data: bytes, top_k: int) -> Classification:
        """Top-k classes of one uploaded image; raises InvalidImage subclasses for bad input."""
        decoded, digest = await anyio.to_thread.run_sync(self._decode, data)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        predictions = await loop.run_in_executor(
            self._model_thread, self._predict_one, decoded, top_k
        )
        return Classification(
            predictions=predictions,
            image_sha256=digest,
            image_width=decoded.width,
            image_height=decoded.height,
            image_format=decoded.format,
            inference_ms=(time.perf_counter() - started) * 1000,
        )

    def _decode(self, data: bytes) -> tuple[DecodedImage, str]:
        decoded = preprocess(data, self.classifier.preprocessing, self.max_image_pixels)
        return decoded, hashlib.sha256(data).hexdigest()

    def _predict_one(self, decoded: DecodedImage, top_k: int) -> list[Prediction]:
        return self.classifier.predict(decoded.tensor.unsqueeze(0), top_k)[0]

    def close(self) -> None:
        """Let a running forward pass finish, then stop the thread."""
        self._model_thread.shutdown(wait=True)
