"""GET /predictions/drift: has the stream of images changed? Backed by `services/drift.py`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from visinspect.api.deps import DriftServiceDep, SettingsDep
from visinspect.api.schemas import DriftOut, error_responses
from visinspect.api.security import require_api_key
from visinspect.services.drift import parse_duration

router = APIRouter(tags=["predictions"], dependencies=[Depends(require_api_key)])


@router.get(
    "/predictions/drift",
    response_model=DriftOut,
    summary="Has the stream of images changed? The recent window against a reference",
    responses=error_responses(401, 403, 422, 503),
)
async def prediction_drift(
    drift: DriftServiceDep,
    settings: SettingsDep,
    window: Annotated[
        str | None, Query(description="The recent window: 90m, 24h, 7d (default DRIFT_WINDOW)")
    ] = None,
    reference: Annotated[
        str | None,
        Query(description="The reference window just before it (default DRIFT_REFERENCE)"),
    ] = None,
    until: Annotated[
        datetime | None, Query(description="End of the recent window (default now); no zone: UTC")
    ] = None,
) -> DriftOut:
    """Compared in SQL and NumPy; the defaults, now, also set the drift gauges on /metrics."""
    recent, earlier = window or settings.drift_window, reference or settings.drift_reference
    if until is None and (recent, earlier) == (settings.drift_window, settings.drift_reference):
        result = await drift.watch(parse_duration(recent), parse_duration(earlier))
    else:
        result = await drift.compare(parse_duration(recent), parse_duration(earlier), until)
    return DriftOut.model_validate(result, from_attributes=True)
