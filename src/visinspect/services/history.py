"""Read the records back: one prediction, a filtered page of them, and counts per class and day.

Filters arrive as the client wrote them; `HistoryFilter.validated()` makes them a valid UTC
selection (or a 422) here, before any query runs.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from visinspect.db import repository
from visinspect.db.repository import After
from visinspect.db.session import Database
from visinspect.db.tables import HeadAnswerRecord, PredictionRecord, ReviewRecord
from visinspect.errors import InvalidCursor, InvalidRequest, OffsetTooDeep, PredictionNotFound
from visinspect.filters import HistoryFilter

# An offset may skip at most this many rows: deeper pages are reached with the cursor, at the
# same cost as the first.
MAX_OFFSET = 10_000
# The largest id a cursor may carry: PostgreSQL's bigint (SQLite's integer is the same).
MAX_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class HistoryPage:
    records: list[PredictionRecord]
    total: int  # rows matching the filter, over all pages; at most repository.TOTAL_COUNT_CAP
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
        record, review = await self.database.run(repository.prediction_with_review, prediction_id)
        if record is None:
            raise PredictionNotFound(f"no prediction with id {prediction_id}")
        return record, review

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
        page = await self.database.run(
            repository.page_with_reviews,
            where.validated(),
            limit,
            offset,
            least_confident_first,
            after,
        )
        records = page.records[:limit]
        next_cursor = encode_cursor(records[-1], order) if len(page.records) > limit else None
        return HistoryPage(records, page.total, page.total_exact, next_cursor, page.reviews)

    async def stats(self, where: HistoryFilter, top_classes: int) -> Stats:
        total, by_class, by_day = await self.database.run(
            repository.prediction_stats, where.validated(), top_classes
        )
        return Stats(total, by_class, [(date.fromisoformat(d), n) for d, n in by_day])


def encode_cursor(last: PredictionRecord | HeadAnswerRecord, order: str) -> str:
    """Opaque to clients: the order, and the sort key and id of the page's last row (a
    prediction, or for the needs-a-person queue a head's answer: least confident first)."""
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
        row_id = key["i"]
        if not isinstance(row_id, int) or isinstance(row_id, bool) or not 1 <= row_id <= MAX_ID:
            raise ValueError("not a row id")  # 1e400, 10**29: no bigint holds them
        if order == "newest":
            moment = datetime.fromisoformat(key["t"])
            if moment.tzinfo is None:
                raise ValueError("naive time")
            return After(created_at=moment, id=row_id)
        confidence = float(key["c"])
        if not math.isfinite(confidence):
            raise ValueError("not a finite confidence")
        return After(confidence=confidence, id=row_id)
    except InvalidCursor:
        raise
    except (ValueError, KeyError, TypeError, UnicodeError, binascii.Error):
        raise InvalidCursor(
            "not a cursor of this service: pass a page's next_cursor unchanged"
        ) from None
