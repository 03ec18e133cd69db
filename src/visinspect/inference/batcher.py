"""Adaptive micro-batching: concurrent requests share one forward pass.

Requests wait in a bounded queue. One loop takes whatever is waiting (up to MAX_BATCH_SIZE) the
moment the model is free, so a lone request never waits for company, while under load the batch
grows by itself to what queued up during the previous pass. BATCH_MAX_WAIT_MS can add a short
wait for fuller batches. A full queue is refused at once (`Overloaded` -> 503), not buffered.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import structlog

from visinspect.errors import Overloaded
from visinspect.inference.model import Classifier, Prediction

log = structlog.get_logger("visinspect.batcher")


@dataclass(slots=True)
class _Job:
    pixels: np.ndarray
    top_k: int
    future: asyncio.Future[list[Prediction]] = field(repr=False)


@dataclass(slots=True)
class BatchStats:
    batches: int = 0
    images: int = 0
    largest: int = 0

    def add(self, size: int) -> None:
        self.batches += 1
        self.images += size
        self.largest = max(self.largest, size)


class MicroBatcher:
    def __init__(
        self,
        classifier: Classifier,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.classifier = classifier
        self.on_batch = on_batch  # (batch size, seconds): for metrics
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        # PyTorch and ONNX Runtime spread one pass over every core; a second pass at the same
        # time would only fight it for them.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="micro-batcher")

    async def classify(self, pixels: np.ndarray, top_k: int) -> list[Prediction]:
        future: asyncio.Future[list[Prediction]] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Job(pixels, top_k, future))
        except asyncio.QueueFull:
            raise Overloaded(
                f"{self._queue.maxsize} images are already waiting for the model (MAX_QUEUE); "
                "retry shortly"
            ) from None
        return await future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._next_batch()
            if not jobs:
                continue
            batch = np.stack([job.pixels for job in jobs])
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._model_thread, self.classifier.predict, batch, [j.top_k for j in jobs]
                )
            except Exception as exc:  # every waiting request learns of it; the loop goes on
                log.exception("inference.failed", batch_size=len(jobs))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.stats.add(len(jobs))
            if self.on_batch is not None:
                self.on_batch(len(jobs), time.perf_counter() - started)
            for job, result in zip(jobs, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)

    async def _next_batch(self) -> list[_Job]:
        jobs = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while len(jobs) < self.max_batch_size:
            try:
                jobs.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [job for job in jobs if not job.future.cancelled()]  # clients that gave up

    async def close(self) -> None:
        """After the server drained its requests: stop the loop, then the model thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(Overloaded("the service is shutting down"))
        self._model_thread.shutdown(wait=True)
