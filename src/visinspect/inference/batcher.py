"""Adaptive micro-batching: concurrent requests share one forward pass.

Requests wait in a bounded queue. One loop takes whatever is waiting (up to MAX_BATCH_SIZE) the
moment the model is free, so a lone request never waits for company, while under load the batch
grows by itself to what queued up during the previous pass. BATCH_MAX_WAIT_MS can add a short
wait for fuller batches. A full queue is refused at once (`Overloaded` -> 503), not buffered.

Deadlines: the batcher keeps a running estimate of the model's time per image, so it knows how
long the images already waiting (and the batch in the model) will take. A request whose deadline
falls before its own image could be done is refused at once (`DeadlineUnreachable` -> 503 with
Retry-After), instead of queueing only to time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import structlog

from visinspect.errors import DeadlineUnreachable, Overloaded
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
        self._in_model = 0  # images of the batch the model is working on
        self.seconds_per_image: float | None = None  # moving average; None until a batch ran

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def images_ahead(self) -> int:
        """Images queued or in the model: what a new image would wait for."""
        return self._queue.qsize() + self._in_model

    def expected_wait_s(self) -> float:
        """How long the images already queued or in the model will keep it busy."""
        if self.seconds_per_image is None:
            return 0.0
        return self.images_ahead * self.seconds_per_image

    def check_deadline(self, deadline: float | None) -> None:
        """Refuse now (DeadlineUnreachable) a request whose image cannot be done by `deadline`
        (the event loop's clock): the work ahead of it plus its own image."""
        if deadline is None or self.seconds_per_image is None:
            return
        wait = self.expected_wait_s()
        done_at = asyncio.get_running_loop().time() + wait + self.seconds_per_image
        if done_at > deadline:
            raise DeadlineUnreachable(
                f"the model is busy for about {wait * 1000:.0f} ms with {self.queued} images "
                "waiting: longer than this request's deadline; retry later or elsewhere",
                retry_after_s=max(1, math.ceil(wait)),
            )

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="micro-batcher")

    async def classify(
        self, pixels: np.ndarray, top_k: int, deadline: float | None = None
    ) -> list[Prediction]:
        self.check_deadline(deadline)
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
            self._in_model = len(jobs)
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
            finally:
                self._in_model = 0
            elapsed = time.perf_counter() - started
            self._learn(elapsed / len(jobs))
            self.stats.add(len(jobs))
            if self.on_batch is not None:
                self.on_batch(len(jobs), elapsed)
            for job, result in zip(jobs, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)

    def _learn(self, seconds_per_image: float) -> None:
        """Exponential moving average over recent batches (weight 0.2 on the newest)."""
        previous = self.seconds_per_image
        self.seconds_per_image = (
            seconds_per_image if previous is None else 0.8 * previous + 0.2 * seconds_per_image
        )

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
