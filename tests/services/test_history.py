"""HistoryService: pages, one record, statistics, and the filters' validation, on rows written
with chosen timestamps (so day boundaries are tested on purpose, never by the clock), inside a
transaction that is rolled back (PostgreSQL and SQLite)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from sqlalchemy.orm import Session

from tests.support import synthetic_record
from visinspect.db import repository
from visinspect.db.session import Database
from visinspect.errors import InvalidRequest, InvalidTimeRange, PredictionNotFound
from visinspect.filters import HistoryFilter
from visinspect.services.history import HistoryService

pytestmark = pytest.mark.anyio

MIDNIGHT = datetime(2026, 3, 1, tzinfo=UTC)  # the rows straddle it
ROWS = [  # (seconds from MIDNIGHT, class_name)
    (-120, "espresso"),
    (-60, "tripod"),
    (-1, "espresso"),
    (0, "espresso"),
    (3600, "tabby"),
]


@pytest.fixture
async def history(database: Database) -> HistoryService:
    def add(session: Session) -> None:
        repository.add_predictions(
            session,
            [
                synthetic_record(
                    f"history-{s}",
                    c,
                    created_at=MIDNIGHT + timedelta(seconds=s),
                    image_sha256=("a" if c == "tabby" else "0") * 64,
                )
                for s, c in ROWS
            ],
        )

    await database.run(add)
    return HistoryService(database)


async def test_statistics_count_per_class_and_per_utc_day(history: HistoryService) -> None:
    stats = await history.stats(HistoryFilter(), top_classes=10)
    assert stats.total == 5
    assert stats.by_class == [("espresso", 3), ("tabby", 1), ("tripod", 1)]
    assert stats.by_day == [(date(2026, 2, 28), 3), (date(2026, 3, 1), 2)]


async def test_statistics_filters(history: HistoryService) -> None:
    only = await history.stats(HistoryFilter(class_name="espresso"), top_classes=10)
    assert (only.total, only.by_day) == (3, [(date(2026, 2, 28), 2), (date(2026, 3, 1), 1)])
    after = await history.stats(HistoryFilter(created_after=MIDNIGHT), top_classes=1)
    assert (after.total, after.by_class) == (2, [("espresso", 1)])
    # A zone other than UTC: 01:00+01:00 is midnight UTC, and created_before is exclusive.
    before = HistoryFilter(
        created_before=datetime(2026, 3, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    )
    assert (await history.stats(before, top_classes=10)).total == 3


async def test_pages_are_newest_first_with_a_total(history: HistoryService) -> None:
    first = await history.page(HistoryFilter(), limit=2, offset=0)
    second = await history.page(HistoryFilter(), limit=2, offset=2)
    assert first.total == second.total == 5
    assert [r.class_name for r in first.records + second.records] == [
        "tabby",
        "espresso",
        "espresso",
        "tripod",
    ]
    naive = HistoryFilter(created_after=datetime(2026, 3, 1), image_sha256="A" * 64)  # UTC
    assert [r.class_name for r in (await history.page(naive, 10, 0)).records] == ["tabby"]


async def test_one_record_or_not_found(history: HistoryService) -> None:
    newest = (await history.page(HistoryFilter(), limit=1, offset=0)).records[0]
    assert (await history.get(newest.id)).class_name == "tabby"
    with pytest.raises(PredictionNotFound):
        await history.get(newest.id + 1000)


@pytest.mark.parametrize(
    "where",
    [
        HistoryFilter(created_after=MIDNIGHT, created_before=MIDNIGHT),
        HistoryFilter(created_after=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))),
        HistoryFilter(
            created_before=datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-14)))
        ),
    ],
    ids=["empty range", "before year 1 in UTC", "after year 9999 in UTC"],
)
async def test_impossible_time_ranges_are_refused(
    history: HistoryService, where: HistoryFilter
) -> None:
    with pytest.raises(InvalidTimeRange):
        await history.page(where, 10, 0)


async def test_control_characters_in_a_class_name_are_refused(history: HistoryService) -> None:
    """PostgreSQL refuses NUL in text: a 422 on every database, never a driver error."""
    with pytest.raises(InvalidRequest, match="control characters"):
        await history.stats(HistoryFilter(class_name="a\x00b"), top_classes=10)


async def test_the_total_is_counted_only_up_to_its_cap(
    history: HistoryService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond TOTAL_COUNT_CAP the page says "more than" instead of reading every row."""
    monkeypatch.setattr(repository, "TOTAL_COUNT_CAP", 3)
    capped = await history.page(HistoryFilter(), limit=2)
    assert (capped.total, capped.total_exact) == (3, False)
    exact = await history.page(HistoryFilter(class_name="espresso"), limit=2)
    assert (exact.total, exact.total_exact) == (3, True)
    assert exact.next_cursor is not None
    rest = await history.page(
        HistoryFilter(class_name="espresso"), limit=2, cursor=exact.next_cursor
    )
    assert [r.class_name for r in rest.records] == ["espresso"]
    assert rest.next_cursor is None


async def test_one_class_pages_hold_that_class_only_newest_first(database: Database) -> None:
    """A class's pages read the (class_name, created_at, id) index as a range of its whole key
    (`repository.list_predictions`): neighbouring names never leak in, ties in time are broken
    by id, and the cursor resumes exactly where a page ended."""
    at = MIDNIGHT + timedelta(days=3)
    rows = [  # names that sort right around "espresso", and three rows at the same moment
        ("espress", at), ("espresso", at), ("espresso maker", at), ("espresso", at),
        ("espresso", at - timedelta(seconds=1)), ("espressp", at), ("espresso", at),
        ("espresso", at + timedelta(seconds=1)),
    ]  # fmt: skip

    def add(session: Session) -> list[tuple[int, datetime]]:
        records = [
            synthetic_record(f"neighbour-{i}", c, created_at=t) for i, (c, t) in enumerate(rows)
        ]
        repository.add_predictions(session, records)
        return [(r.id, r.created_at) for r in records if r.class_name == "espresso"]

    espresso = await database.run(add)
    expected = [i for i, _ in sorted(espresso, key=lambda r: (r[1], r[0]), reverse=True)]
    history = HistoryService(database)
    seen: list[int] = []
    cursor = None
    while True:
        page = await history.page(HistoryFilter(class_name="espresso"), limit=2, cursor=cursor)
        assert {r.class_name for r in page.records} <= {"espresso"}
        seen += [r.id for r in page.records]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == expected
