"""Deadlines and shedding: work that cannot finish in time is refused at once, a client that left
is not classified, and a client's own deadline times out under its own name. The model is held by
a gate (never a slow machine), on the real model and real databases."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from tests.support import count_records, gated_model, make_settings
from visinspect.context import RequestContext
from visinspect.db.session import Database
from visinspect.errors import ClientGone, DeadlineUnreachable, RequestTimedOut
from visinspect.inference.classifier import Classifier
from visinspect.services.predict import Upload
from visinspect.startup import Prepared, Services, open_services

pytestmark = pytest.mark.anyio


@pytest.fixture
async def services(database: Database, classifier: Classifier) -> AsyncIterator[Services]:
    settings = make_settings("sqlite://", request_timeout_s=10)
    async with open_services(settings, Prepared(database, classifier)) as started:
        yield started


def coffee(photos: Path) -> Upload:
    return Upload.from_bytes((photos / "coffee.png").read_bytes(), "coffee.png")


async def test_a_deadline_the_waiting_work_outlasts_is_refused_at_once(
    services: Services, database: Database, classifier: Classifier, photos: Path
) -> None:
    await services.predict.classify_and_record(coffee(photos), RequestContext("warm"))
    assert services.batcher.seconds_per_image is not None  # learnt from that pass
    with gated_model(classifier) as gate:
        async with anyio.create_task_group() as group:
            for i in range(4):
                group.start_soon(
                    lambda i=i: services.predict.classify_and_record(
                        coffee(photos), RequestContext(f"queued-{i}")
                    )
                )
            with anyio.fail_after(20):  # the four decoded: in the held pass or queued behind it
                while not (gate.entered.is_set() and services.batcher.images_ahead == 4):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            assert services.batcher.expected_wait_s() > 0.001

            started = time.perf_counter()
            with pytest.raises(
                DeadlineUnreachable, match="longer than this request's deadline"
            ) as e:
                await services.predict.classify_and_record(
                    coffee(photos), RequestContext("hurried", timeout_s=0.001)
                )
            assert time.perf_counter() - started < 0.5  # refused, not queued until it timed out
            assert e.value.retry_after_s is not None
            assert e.value.retry_after_s >= 1
            # A deadline that the waiting work fits in is accepted and answered.
            group.start_soon(
                lambda: services.predict.classify_and_record(
                    coffee(photos), RequestContext("patient", timeout_s=9)
                )
            )
            gate.release.set()
    assert await count_records(database) == 1 + 4 + 1  # warm-up, the queued four, the patient one


async def test_the_clients_own_deadline_times_out_under_its_name(
    services: Services, database: Database, classifier: Classifier, photos: Path
) -> None:
    """Nothing learnt yet, so nothing is shed: the held pass outlasts the client's 0.2 s."""
    with gated_model(classifier) as gate:
        started = time.perf_counter()
        with pytest.raises(RequestTimedOut, match=r"0\.2 s \(X-Request-Timeout-Ms\)"):
            await services.predict.classify_and_record(
                coffee(photos), RequestContext("short", timeout_s=0.2)
            )
        assert time.perf_counter() - started < 5  # its own deadline, not REQUEST_TIMEOUT_S (10 s)
        gate.release.set()
    assert await count_records(database) == 0


async def test_a_client_that_left_is_neither_classified_nor_stored(
    services: Services, database: Database, photos: Path
) -> None:
    async def gone() -> bool:
        return True

    images_before = services.batcher.stats.images
    with pytest.raises(ClientGone):
        await services.predict.classify_and_record(
            coffee(photos), RequestContext("gone", gone=gone)
        )
    outcomes = await services.predict.classify_many(
        [coffee(photos), coffee(photos)], RequestContext("gone-batch", gone=gone)
    )
    assert all(isinstance(o, ClientGone) for o in outcomes)
    assert services.batcher.stats.images == images_before  # the model never saw them
    assert await count_records(database) == 0
