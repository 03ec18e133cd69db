"""Read the records back: one prediction, a filtered page of them, and counts per class and day.

Filters arrive as the client wrote them; this is where they become a valid UTC time range (or a
422) before any query runs.
"""

from __future__ import annotations

import base64
import binascii
import json
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy.orm import Session

from visinspect.db import repository
from visinspect.db.models import PredictionRecord, ReviewRecord
from visinspect.db.repository import After, PredictionFilter
from visinspect.db.session import Database
from visinspect.errors import (
    InvalidCursor,
    InvalidRequest,
    InvalidTimeRange,
    OffsetTooDeep,
    PredictionNotFound,
)


@dataclass(frozen=True, slots=True)
class HistoryFilter:
    """What to select. Times without a zone mean UTC; `created_after` is inclusive,
    `created_before` exclusive."""

    class_name: str | None = None
    image_sha256: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    reviewed: bool | None = None  # None: either
    min_confidence: float | None = None
    max_confidence: float | None = None

    def to_query(self) -> PredictionFilter:
        if self.class_name is not None and _has_control_characters(self.class_name):
            raise InvalidRequest("class_name contains control characters")
        after, before = as_utc(self.created_after), as_utc(self.created_before)
        if after is not None and before is not None and after >= before:
            raise InvalidTimeRange("created_after must be earlier than created_before")
        low, high = self.min_confidence, self.max_confidence
        if low is not None and high is not None and low > high:
            raise InvalidRequest("min_confidence must not be above max_confidence")
        return PredictionFilter(
            self.class_name, self.image_sha256, after, before, self.reviewed, low, high
        )


# Counting the rows that match stops here (it reads at most this many index entries), and an
# offset may skip at most this many: deeper pages are reached with the cursor, at the same cost.
TOTAL_COUNT_CAP = 10_000
MAX_OFFSET = 10_000


@dataclass(frozen=True, slots=True)
class HistoryPage:
    records: list[PredictionRecord]
    total: int  # rows matching the filter, over all pages; at most TOTAL_COUNT_CAP
    total_exact: bool  # False: there are more than `total`
    next_cursor: str | None  # where the next page starts; None on the last page
    reviews: dict[int, ReviewRecord]  # prediction id -> its latest review, where it has one


@dataclass(frozen=True, slots=True)
class Stats:
    total: int
    by_class: list[tuple[str, int]]  # most frequent first
    by_day: list[tuple[date, int]]  # UTC days, oldest first


class HistoryService:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def get(self, prediction_id: int) -> PredictionRecord:
        record = await self.database.run(repository.get_prediction, prediction_id)
        if record is None:
            raise PredictionNotFound(f"no prediction with id {prediction_id}")
        return record

    async def get_with_review(
        self, prediction_id: int
    ) -> tuple[PredictionRecord, ReviewRecord | None]:
        """One record and its review that counts (the latest), if it has one."""
        record, reviews = await self.database.run(_one_with_review, prediction_id)
        if record is None:
            raise PredictionNotFound(f"no prediction with id {prediction_id}")
        return record, reviews.get(prediction_id)

    async def page(
        self,
        where: HistoryFilter,
        limit: int,
        offset: int = 0,
        least_confident_first: bool = False,
        cursor: str | None = None,
    ) -> HistoryPage:
        """Newest first, or least confident first (the review queue), from the start, an
        `offset` (up to MAX_OFFSET) or a `cursor` (a previous page's `next_cursor`); with each
        record's review that counts, read in the same transaction."""
        if cursor is not None and offset:
            raise InvalidRequest("give either cursor or offset, not both")
        if offset > MAX_OFFSET:
            raise OffsetTooDeep(
                f"offset {offset} is above {MAX_OFFSET}: skipping rows reads them all; page on "
                "with `cursor` (each page's next_cursor) instead"
            )
        order = "least_confident" if least_confident_first else "newest"
        after = decode_cursor(cursor, order) if cursor is not None else None
        records, (total, exact), reviews = await self.database.run(
            _page_with_reviews, where.to_query(), limit, offset, least_confident_first, after
        )
        more = len(records) > limit
        records = records[:limit]
        next_cursor = encode_cursor(records[-1], order) if more else None
        return HistoryPage(records, total, exact, next_cursor, reviews)

    async def stats(self, where: HistoryFilter, top_classes: int) -> Stats:
        total, by_class, by_day = await self.database.run(
            repository.prediction_stats, where.to_query(), top_classes
        )
        return Stats(total, by_class, [(date.fromisoformat(d), n) for d, n in by_day])


def _one_with_review(
    session: Session, prediction_id: int
) -> tuple[PredictionRecord | None, dict[int, ReviewRecord]]:
    record = repository.get_prediction(session, prediction_id)
    return record, repository.latest_reviews(session, [prediction_id] if record else [])


def _page_with_reviews(
    session: Session,
    where: PredictionFilter,
    limit: int,
    offset: int,
    least_confident: bool,
    after: After | None,
) -> tuple[list[PredictionRecord], tuple[int, bool], dict[int, ReviewRecord]]:
    """One more row than the page: whether a next page exists, without counting."""
    records = repository.list_predictions(session, where, limit + 1, offset, least_confident, after)
    total = repository.count_predictions(session, where, TOTAL_COUNT_CAP)
    return records, total, repository.latest_reviews(session, [r.id for r in records[:limit]])


def encode_cursor(last: PredictionRecord, order: str) -> str:
    """Opaque to clients: the order, and the sort key and id of the page's last row."""
    key: dict[str, Any] = {"o": order, "i": last.id}
    if order == "newest":
        key["t"] = last.created_at.isoformat()
    else:
        key["c"] = last.confidence
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode()


def decode_cursor(cursor: str, order: str) -> After:
    """The cursor's position; InvalidCursor if it is not one of ours, or of another order."""
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
        if key["o"] != order:
            raise InvalidCursor(
                f"this cursor pages the {key['o']!r} order, not {order!r}: keep the request's "
                "parameters from page to page"
            )
        row_id = int(key["i"])
        if order == "newest":
            moment = datetime.fromisoformat(key["t"])
            if moment.tzinfo is None:
                raise ValueError("naive time")
            return After(created_at=moment, id=row_id)
        return After(confidence=float(key["c"]), id=row_id)
    except InvalidCursor:
        raise
    except (ValueError, KeyError, TypeError, UnicodeError, binascii.Error):
        raise InvalidCursor(
            "not a cursor of this service: pass a page's next_cursor unchanged"
        ) from None


def _has_control_characters(text: str) -> bool:
    """NUL and friends: PostgreSQL refuses NUL in text, and no class name contains any."""
    return any(unicodedata.category(c) == "Cc" for c in text)


def as_utc(moment: datetime | None) -> datetime | None:
    """A client's time as UTC (no zone means UTC); a 422 for one outside years 1..9999 in UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 lies before year 1 in UTC
        raise InvalidTimeRange(
            f"{moment.isoformat()} is outside the range of dates this service can store"
        ) from None
