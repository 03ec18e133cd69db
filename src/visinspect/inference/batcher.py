"""Adaptive micro-batching: concurrent requests share one forward pass.

Requests wait in a bounded queue. Each of INFERENCE_LANES loops takes whatever is waiting (up to
MAX_BATCH_SIZE) the moment its lane is free, so a lone request never waits for company, while
under load the batch grows by itself to what queued up during the previous pass. Lanes are
forward passes running at once on the same model (ONNX Runtime and PyTorch allow concurrent
runs), each on TORCH_THREADS threads: on a CPU shared with decoding, two single-threaded passes
do more per CPU second than one pass split over two threads, whose threads wait for each other
after every operator (docs/benchmarks.md). BATCH_MAX_WAIT_MS can add a short
wait for fuller batches. A full queue is refused at once (`Overloaded` -> 503), not buffered.

Deadlines: the batcher keeps a running estimate of the model's time per image, so it knows how
long the images already waiting (and the batch in the model) will take. A request whose deadline
falls before its own image could be done is refused at once (`DeadlineUnreachable` -> 503 with
Retry-After), instead of queueing only to time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import structlog

from visinspect.capacity import run_in_background
from visinspect.errors import DeadlineUnreachable, Overloaded
from visinspect.inference.anomaly import DetectorAnswer, LoadedDetector, PatchExtractor
from visinspect.inference.classifier import Classified, Classifier
from visinspect.inference.preprocess import normalize
from visinspect.tracing import Timeline

log = structlog.get_logger("visinspect.batcher")


@dataclass(slots=True)
class _Job:
    crop: np.ndarray  # uint8 crop x crop x 3 (preprocess.DecodedImage.crop)
    top_k: int
    future: asyncio.Future[Classified] = field(repr=False)
    timeline: Timeline  # the batch's start and end go here (for the trace)
    scan: Scan | None = None  # the detectors to answer, on the whole frame


@dataclass(frozen=True, slots=True)
class Scan:
    """What a detector needs of an upload: its whole frame, the size its region is given in,
    and the detectors that answer for it."""

    frame: np.ndarray  # uint8 frame x frame x 3 (preprocess.DecodedImage.frame)
    width: int
    height: int
    detectors: tuple[LoadedDetector, ...]


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
        on_queue: Callable[[int], None] | None = None,
        lanes: int = 1,
        patches: PatchExtractor | None = None,
        on_detector_failure: Callable[[int, str, str], None] | None = None,
    ) -> None:
        self.classifier = classifier
        self.patches = patches  # the patch graph detectors read; None: no detector answers
        self.on_detector_failure = on_detector_failure  # (head id, reason, detail)
        self.on_batch = on_batch  # (batch size, seconds): for metrics
        self.on_queue = on_queue  # images waiting, whenever it changes: for metrics
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        self.lanes = lanes
        self._model_threads = ThreadPoolExecutor(
            max_workers=lanes, thread_name_prefix="inference", initializer=run_in_background
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._in_model = 0  # images of the batches the lanes are working on
        # Moving average of one lane's time per image; None until a batch ran.
        self.seconds_per_image: float | None = None

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
        return self.images_ahead * self.seconds_per_image / self.lanes

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
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._serve(), name=f"micro-batcher-{lane}")
            for lane in range(self.lanes)
        ]

    async def classify(
        self,
        crop: np.ndarray,
        top_k: int,
        deadline: float | None = None,
        timeline: Timeline | None = None,
        scan: Scan | None = None,
    ) -> Classified:
        """The image's top-k and embedding, and with a `scan` its detectors' answers.
        `timeline` receives when the image's batch entered and left the model."""
        self.check_deadline(deadline)
        future: asyncio.Future[Classified] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Job(crop, top_k, future, timeline or Timeline(), scan))
        except asyncio.QueueFull:
            raise Overloaded(
                f"{self._queue.maxsize} images are already waiting for the model (MAX_QUEUE); "
                "retry shortly"
            ) from None
        self._queue_changed()
        return await future

    def _queue_changed(self) -> None:
        if self.on_queue is not None:
            self.on_queue(self._queue.qsize())

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._next_batch()
            self._queue_changed()
            if not jobs:
                continue
            started = time.perf_counter()
            started_ns = time.time_ns()
            self._in_model += len(jobs)
            try:
                results = await loop.run_in_executor(self._model_threads, self._predict, jobs)
            except Exception as exc:  # every waiting request learns of it; the loop goes on
                log.exception("inference.failed", batch_size=len(jobs))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                self._in_model -= len(jobs)
            elapsed = time.perf_counter() - started
            self._learn(elapsed / len(jobs))
            self.stats.add(len(jobs))
            if self.on_batch is not None:
                self.on_batch(len(jobs), elapsed)
            ended_ns = time.time_ns()
            for job, result in zip(jobs, results, strict=True):
                job.timeline.model_started, job.timeline.model_ended = started_ns, ended_ns
                job.timeline.batch_size = len(jobs)
                if not job.future.done():
                    job.future.set_result(result)

    def _predict(self, jobs: list[_Job]) -> list[Classified]:
        """In a model thread: the batch is assembled and normalised there too, off the event
        loop, in one vectorised pass."""
        batch = normalize(np.stack([job.crop for job in jobs]), self.classifier.preprocessing)
        classified = self.classifier.classify(batch, [job.top_k for job in jobs])
        scanned = [i for i, job in enumerate(jobs) if job.scan is not None]
        if scanned and self.patches is not None:
            answers = self._detect([jobs[i].scan for i in scanned])  # type: ignore[misc]
            for i, found in zip(scanned, answers, strict=True):
                classified[i] = dataclasses.replace(classified[i], anomalies=found)
        return classified

    def _detect(self, scans: list[Scan]) -> list[tuple[DetectorAnswer, ...]]:
        """Each scan's detectors' answers, from one pass of the patch graph over the batch's
        frames. A detector that fails is skipped (reported), and so are all of them when the
        graph fails: a detector never fails a classification."""
        assert self.patches is not None
        try:
            features = self.patches.features(np.stack([scan.frame for scan in scans]))
        except Exception as exc:
            for detector in {d.head_id for scan in scans for d in scan.detectors}:
                self._detector_failed(detector, "patch_graph_failed", str(exc))
            return [() for _ in scans]
        answers = []
        for scan, patches in zip(scans, features, strict=True):
            found = []
            for served in scan.detectors:
                try:
                    answer = served.detector.answer(patches, scan.width, scan.height)
                except Exception as exc:
                    self._detector_failed(served.head_id, "apply_failed", str(exc))
                    continue
                found.append(DetectorAnswer(served, answer))
            answers.append(tuple(found))
        return answers

    def _detector_failed(self, head_id: int, reason: str, detail: str) -> None:
        log.error("detector.skipped", head_id=head_id, reason=reason, detail=detail)
        if self.on_detector_failure is not None:
            self.on_detector_failure(head_id, reason, detail)

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
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(Overloaded("the service is shutting down"))
        self._model_threads.shutdown(wait=True)
