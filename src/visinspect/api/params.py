"""The path and query parameters several routes share, declared once."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Depends, Path, Query

from visinspect.filters import HistoryFilter

PredictionId = Annotated[int, Path(ge=1, le=2**63 - 1)]
HeadId = Annotated[int, Path(ge=1, le=2**63 - 1)]
LabelSetName = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
ClassName = Annotated[
    str | None, Query(max_length=128, description="Exact top-1 class name, e.g. `espresso`")
]
CreatedAfter = Annotated[
    datetime | None, Query(description="Inclusive, ISO 8601; no zone means UTC")
]
CreatedBefore = Annotated[
    datetime | None, Query(description="Exclusive, ISO 8601; no zone means UTC")
]
TopClasses = Annotated[int, Query(ge=1, le=1000)]


async def _class_and_time(
    class_name: ClassName = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
) -> HistoryFilter:
    return HistoryFilter(
        class_name=class_name, created_after=created_after, created_before=created_before
    )


# The selection of the statistics and quality routes: a class and a time range.
ClassAndTime = Annotated[HistoryFilter, Depends(_class_and_time)]
