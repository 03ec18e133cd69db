"""ReviewService: verdicts and their refusals, the latest review counting, the review queue and
the accuracy figures, on rows written with known classes, confidences and days, inside a
transaction that is rolled back (PostgreSQL and SQLite)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from tests.support import synthetic_record
from visinspect.db import repository
from visinspect.db.session import Database
from visinspect.errors import InvalidRequest, InvalidReview, PredictionNotFound, UnknownClass
from visinspect.filters import HistoryFilter
from visinspect.inference.classifier import load_labels
from visinspect.services.history import HistoryService
from visinspect.services.reviews import Accuracy, Confusion, ReviewService

pytestmark = pytest.mark.anyio

ESPRESSO, CUP, TABBY, TIGER_CAT = 967, 968, 281, 282
MIDNIGHT = datetime(2026, 3, 1, tzinfo=UTC)
# (request id, class id, class name, confidence, seconds from MIDNIGHT)
ROWS = [
    ("e1", ESPRESSO, "espresso", 0.95, -60),
    ("e2", ESPRESSO, "espresso", 0.40, -30),
    ("e3", ESPRESSO, "espresso", 0.80, 30),
    ("e4", ESPRESSO, "espresso", 0.20, 60),
    ("t1", TABBY, "tabby", 0.30, 90),
    ("t2", TABBY, "tabby", 0.45, 120),
]


@pytest.fixture
async def ids(database: Database) -> dict[str, int]:
    def add(session: Session) -> dict[str, int]:
        records = [
            synthetic_record(
                request_id,
                name,
                created_at=MIDNIGHT + timedelta(seconds=s),
                class_id=class_id,
                confidence=confidence,
            )
            for request_id, class_id, name, confidence, s in ROWS
        ]
        repository.add_predictions(session, records)
        return {r.request_id: r.id for r in records}

    return await database.run(add)


@pytest.fixture
def reviews(database: Database) -> ReviewService:
    return ReviewService(database, load_labels())


async def test_a_correct_verdict_confirms_the_predicted_class(
    reviews: ReviewService, ids: dict[str, int]
) -> None:
    review = await reviews.review(ids["e1"], "correct", None, "  looks right ", "alice")
    assert (review.verdict, review.predicted_class_id, review.true_class_id) == (
        "correct",
        ESPRESSO,
        ESPRESSO,
    )
    assert (review.reviewer, review.note, review.prediction_id) == (
        "alice",
        "  looks right ",
        ids["e1"],
    )
    same = await reviews.review(ids["e1"], "correct", ESPRESSO, None, None)  # naming it is fine
    assert same.true_class_id == ESPRESSO


@pytest.mark.parametrize(
    ("verdict", "true_class_id", "note", "error", "message"),
    [
        ("wrong", None, None, InvalidReview, "needs true_class_id"),
        ("wrong", ESPRESSO, None, InvalidReview, "other than the predicted"),
        ("correct", CUP, None, InvalidReview, r"confirms the predicted class \(967\)"),
        ("wrong", 1000, None, UnknownClass, r"0\.\.999"),
        ("wrong", -1, None, UnknownClass, r"0\.\.999"),
        ("correct", None, "nul\x00inside", InvalidReview, "control characters"),
    ],
)
async def test_a_verdict_that_contradicts_itself_is_refused_and_stores_nothing(
    reviews: ReviewService,
    ids: dict[str, int],
    verdict: str,
    true_class_id: int | None,
    note: str | None,
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        await reviews.review(ids["e1"], verdict, true_class_id, note, None)  # type: ignore[arg-type]
    assert await reviews.history(ids["e1"], 50) == []


async def test_an_unknown_prediction_is_not_found(reviews: ReviewService) -> None:
    with pytest.raises(PredictionNotFound):
        await reviews.review(10**12, "correct", None, None, None)
    with pytest.raises(PredictionNotFound):
        await reviews.history(10**12, 50)


async def test_the_latest_review_counts_and_the_earlier_ones_are_kept(
    reviews: ReviewService, database: Database, ids: dict[str, int]
) -> None:
    first = await reviews.review(ids["e2"], "correct", None, None, "alice")
    second = await reviews.review(ids["e2"], "wrong", CUP, "an empty cup", "bob")
    assert [r.id for r in await reviews.history(ids["e2"], 50)] == [second.id, first.id]
    history = HistoryService(database)
    record, latest = await history.get_with_review(ids["e2"])
    assert (record.id, latest is not None and latest.id) == (ids["e2"], second.id)
    quality = await reviews.quality(HistoryFilter(), 20, 20)
    assert quality.overall == Accuracy(reviewed=1, correct=0)


async def test_quality_per_class_day_and_confusions_from_the_latest_reviews(
    reviews: ReviewService, ids: dict[str, int]
) -> None:
    await reviews.review(ids["e1"], "correct", None, None, None)
    await reviews.review(ids["e2"], "wrong", CUP, None, None)
    await reviews.review(ids["e3"], "wrong", CUP, None, None)  # overturned below
    await reviews.review(ids["e3"], "correct", None, None, None)
    await reviews.review(ids["e4"], "wrong", CUP, None, None)
    await reviews.review(ids["t1"], "wrong", TIGER_CAT, None, None)  # t2 stays unreviewed
    quality = await reviews.quality(HistoryFilter(), 20, 20)
    assert quality.overall == Accuracy(reviewed=5, correct=2)
    assert quality.overall.accuracy == pytest.approx(0.4)
    assert quality.by_class == [("espresso", Accuracy(4, 2)), ("tabby", Accuracy(1, 0))]
    day = MIDNIGHT.date()
    assert quality.by_day == [(day - timedelta(days=1), Accuracy(2, 1)), (day, Accuracy(3, 1))]
    assert quality.confusions == [
        Confusion(ESPRESSO, "espresso", CUP, "cup", 2),
        Confusion(TABBY, "tabby", TIGER_CAT, "tiger cat", 1),
    ]
    only_tabby = await reviews.quality(HistoryFilter(class_name="tabby"), 20, 20)
    assert only_tabby.overall == Accuracy(1, 0)
    after_midnight = await reviews.quality(HistoryFilter(created_after=MIDNIGHT), 20, 20)
    assert after_midnight.overall == Accuracy(3, 1)
    assert (await reviews.quality(HistoryFilter(), 1, 1)).confusions == quality.confusions[:1]


async def test_quality_without_reviews_has_no_accuracy(reviews: ReviewService) -> None:
    quality = await reviews.quality(HistoryFilter(), 20, 20)
    assert (quality.overall, quality.overall.accuracy, quality.by_class) == (
        Accuracy(0, 0),
        None,
        [],
    )


async def test_the_review_queue_is_unreviewed_and_least_confident_first(
    reviews: ReviewService, database: Database, ids: dict[str, int]
) -> None:
    await reviews.review(ids["e4"], "correct", None, None, None)  # the least confident: done
    history = HistoryService(database)
    queue = await history.page(HistoryFilter(reviewed=False, max_confidence=0.5), 10, 0, True)
    assert [r.request_id for r in queue.records] == ["t1", "e2", "t2"]
    assert (queue.total, queue.reviews) == (3, {})
    done = await history.page(HistoryFilter(reviewed=True), 10, 0)
    assert [r.request_id for r in done.records] == ["e4"]
    assert done.reviews[ids["e4"]].verdict == "correct"
    band = await history.page(HistoryFilter(min_confidence=0.4, max_confidence=0.8), 10, 0)
    assert [r.request_id for r in band.records] == ["t2", "e3", "e2"]  # newest first
    with pytest.raises(InvalidRequest, match="min_confidence"):
        await history.page(HistoryFilter(min_confidence=0.6, max_confidence=0.5), 10, 0)


async def test_the_day_of_a_review_is_the_predictions_day(
    reviews: ReviewService, ids: dict[str, int]
) -> None:
    """Figures per day are about when the images came, not when someone reviewed them."""
    await reviews.review(ids["e1"], "correct", None, None, None)
    quality = await reviews.quality(HistoryFilter(), 20, 20)
    assert [d for d, _ in quality.by_day] == [date(2026, 2, 28)]


async def test_reviews_are_read_a_page_at_a_time(
    reviews: ReviewService, ids: dict[str, int]
) -> None:
    """Anyone may post any number of reviews: they are never all read at once."""
    posted = [await reviews.review(ids["e1"], "correct", None, f"n{i}", None) for i in range(7)]
    newest_first = [r.id for r in reversed(posted)]
    first = await reviews.history(ids["e1"], 3)
    second = await reviews.history(ids["e1"], 3, before=first[-1].id)
    last = await reviews.history(ids["e1"], 3, before=second[-1].id)
    assert [r.id for r in first + second + last] == newest_first
    assert await reviews.history(ids["e1"], 3, before=last[-1].id) == []
