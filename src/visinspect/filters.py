"""What a client may select from the history: one filter type, from the route to the query.

The route fills it in as the client wrote it; `validated()` (called by the services) makes it a
valid UTC selection or raises a 422-mapped error before any query runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from visinspect.errors import InvalidRequest, InvalidTimeRange
from visinspect.text import has_control_characters


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryFilter:
    """Times without a zone mean UTC; `created_after` is inclusive, `created_before` exclusive,
    the confidence bounds inclusive. Statistics and quality use the class and the times only."""

    class_name: str | None = None
    image_sha256: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    reviewed: bool | None = None  # None: either
    min_confidence: float | None = None
    max_confidence: float | None = None

    def validated(self) -> HistoryFilter:
        """The same selection with its times in UTC and its digest in lower case; InvalidRequest
        (or InvalidTimeRange) for one that cannot select anything meaningful."""
        if self.class_name is not None and has_control_characters(self.class_name):
            raise InvalidRequest("class_name contains control characters")
        after, before = as_utc(self.created_after), as_utc(self.created_before)
        if after is not None and before is not None and after >= before:
            raise InvalidTimeRange("created_after must be earlier than created_before")
        low, high = self.min_confidence, self.max_confidence
        if low is not None and high is not None and low > high:
            raise InvalidRequest("min_confidence must not be above max_confidence")
        digest = self.image_sha256.lower() if self.image_sha256 is not None else None
        return replace(self, image_sha256=digest, created_after=after, created_before=before)


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
