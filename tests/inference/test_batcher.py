"""Micro-batching: concurrent requests share forward passes, a lone one never waits, a full queue
is refused at once."""

from __future__ import annotations

import asyncio
import threading

import anyio
import numpy as np
import pytest

from tests.support import PHOTOS
from visinspect.errors import Overloaded
from visinspect.inference.batcher import MicroBatcher
from visinspect.inference.classifier import Classifier
from visinspect.inference.preprocess import preprocess

pytestmark = pytest.mark.anyio


class RecordingBackend:
    """The real backend, plus a record of batch sizes and a gate that can hold the first pass."""

    def __init__(self, classifier: Classifier) -> None:
        self.inner = classifier.backend
        self.name = self.inner.name
        self.sizes: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        first = not self.sizes
        self.sizes.append(len(batch))
        self.entered.set()
        if first:
            self.release.wait(timeout=60)
        return self.inner.forward(batch)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(batch)[0]


@pytest.fixture
def recording(classifier: Classifier) -> RecordingBackend:
    recorder = RecordingBackend(classifier)
    original = classifier.backend
    classifier.backend = recorder
    yield recorder  # type: ignore[misc]
    recorder.release.set()
    classifier.backend = original


async def queued(batcher: MicroBatcher, count: int, timeout_s: float = 30) -> None:
    """Yield to the loop until exactly `count` images wait (a condition, not a guessed sleep)."""
    with anyio.fail_after(timeout_s):
        while batcher.queued != count:  # noqa: ASYNC110 - polled: the queue has no event
            await asyncio.sleep(0.001)


def crop(classifier: Classifier, name: str) -> np.ndarray:
    return preprocess((PHOTOS / name).read_bytes(), classifier.preprocessing, 10**8).crop


async def test_lone_request_is_a_batch_of_one(
    classifier: Classifier, recording: RecordingBackend
) -> None:
    batcher = MicroBatcher(classifier, max_batch_size=16, max_wait_ms=0, max_queue=8)
    batcher.start()
    try:
        result = await batcher.classify(crop(classifier, "coffee.png"), 3)
    finally:
        await batcher.close()
    assert result.predictions[0].class_name == "espresso"
    assert result.embedding is not None
    assert result.embedding.shape == (1280,)
    assert recording.sizes == [1]


async def test_requests_that_queue_up_share_one_pass(
    classifier: Classifier, recording: RecordingBackend
) -> None:
    batcher = MicroBatcher(classifier, max_batch_size=16, max_wait_ms=0, max_queue=32)
    batcher.start()
    coffee, cat = crop(classifier, "coffee.png"), crop(classifier, "chelsea.png")
    recording.release.clear()
    try:
        first = asyncio.ensure_future(batcher.classify(coffee, 1))
        await asyncio.to_thread(recording.entered.wait, 30)  # the first pass is now running
        rest = [asyncio.ensure_future(batcher.classify(im, 2)) for im in [coffee, cat] * 5]
        await queued(batcher, 10)  # all ten wait behind the running pass
        recording.release.set()
        results = await asyncio.gather(first, *rest)
    finally:
        await batcher.close()
    assert recording.sizes == [1, 10]
    assert batcher.stats.largest == 10
    assert [r.predictions[0].class_name for r in results[1:3]] == ["espresso", "tiger cat"]
    assert all(len(r.predictions) == 2 for r in results[1:])


async def test_batch_size_is_capped(classifier: Classifier, recording: RecordingBackend) -> None:
    batcher = MicroBatcher(classifier, max_batch_size=4, max_wait_ms=0, max_queue=32)
    batcher.start()
    image = crop(classifier, "coffee.png")
    recording.release.clear()
    try:
        first = asyncio.ensure_future(batcher.classify(image, 1))
        await asyncio.to_thread(recording.entered.wait, 30)
        rest = [asyncio.ensure_future(batcher.classify(image, 1)) for _ in range(9)]
        await queued(batcher, 9)
        recording.release.set()
        await asyncio.gather(first, *rest)
    finally:
        await batcher.close()
    assert recording.sizes == [1, 4, 4, 1]


async def test_max_wait_gathers_a_fuller_batch(
    classifier: Classifier, recording: RecordingBackend
) -> None:
    batcher = MicroBatcher(classifier, max_batch_size=8, max_wait_ms=300, max_queue=32)
    batcher.start()
    image = crop(classifier, "coffee.png")
    try:
        first = asyncio.ensure_future(batcher.classify(image, 1))
        await asyncio.sleep(0)  # `first` is queued
        await queued(batcher, 0)  # ... and taken: the batcher now waits up to 300 ms for more
        second = asyncio.ensure_future(batcher.classify(image, 1))
        await asyncio.gather(first, second)
    finally:
        await batcher.close()
    assert recording.sizes == [2]


async def test_full_queue_is_refused_at_once(
    classifier: Classifier, recording: RecordingBackend
) -> None:
    batcher = MicroBatcher(classifier, max_batch_size=1, max_wait_ms=0, max_queue=2)
    batcher.start()
    image = crop(classifier, "coffee.png")
    recording.release.clear()
    try:
        running = asyncio.ensure_future(batcher.classify(image, 1))
        await asyncio.to_thread(recording.entered.wait, 30)
        waiting = [asyncio.ensure_future(batcher.classify(image, 1)) for _ in range(2)]
        await queued(batcher, 2)
        with pytest.raises(Overloaded, match="MAX_QUEUE"):
            await batcher.classify(image, 1)
        recording.release.set()
        await asyncio.gather(running, *waiting)
    finally:
        await batcher.close()


async def test_lanes_run_passes_side_by_side(
    classifier: Classifier, recording: RecordingBackend
) -> None:
    """With two lanes a request does not wait for a pass that another lane is running."""
    batcher = MicroBatcher(classifier, max_batch_size=8, max_wait_ms=0, max_queue=8, lanes=2)
    batcher.start()
    coffee, cat = crop(classifier, "coffee.png"), crop(classifier, "chelsea.png")
    recording.release.clear()
    try:
        first = asyncio.ensure_future(batcher.classify(coffee, 1))
        await asyncio.to_thread(recording.entered.wait, 30)  # lane 1 holds its pass
        second = await asyncio.wait_for(batcher.classify(cat, 1), 30)  # lane 2 answers
        assert not first.done()
        assert batcher.images_ahead == 1  # the held pass
        recording.release.set()
        assert (await first).predictions[0].class_name == "espresso"
    finally:
        await batcher.close()
    assert second.predictions[0].class_name == "tiger cat"
    assert recording.sizes == [1, 1]


async def test_expected_wait_is_shared_by_the_lanes(classifier: Classifier) -> None:
    one, two = (MicroBatcher(classifier, 8, 0, 8, lanes=n) for n in (1, 2))
    for batcher in (one, two):
        batcher.seconds_per_image = 0.01
        batcher._in_model = 4  # four images in passes
    assert one.expected_wait_s() == pytest.approx(0.04)
    assert two.expected_wait_s() == pytest.approx(0.02)
