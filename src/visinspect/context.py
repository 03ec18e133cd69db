"""One request's own terms, given once by the route and read wherever the work needs them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass


async def _stays() -> bool:
    return False


@dataclass(frozen=True, slots=True)
class RequestContext:
    """`timeout_s`: the client's own time limit (X-Request-Timeout-Ms; the service caps it by
    REQUEST_TIMEOUT_S). `gone()`: whether the client has left, so that its images are dropped
    before the model spends time on them (a CLI run never leaves)."""

    request_id: str
    top_k: int | None = None  # None: DEFAULT_TOP_K
    timeout_s: float | None = None
    gone: Callable[[], Awaitable[bool]] = _stays
    label_set: str | None = None  # answer with this set's active head only (None: every one)
    key_name: str | None = None  # the caller's API key (None: keys are off); owns kept images
