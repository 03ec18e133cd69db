"""The one middleware that observes every request: its id, its log line and its metrics.

A request gets an id (the client's `X-Request-ID` when it is sane, else a new one), echoed in the
response and bound to every log line written while it runs. When it ends, one `http.request` line
and the Prometheus request metrics record the same status and the same duration.

Pure ASGI (not BaseHTTPMiddleware), so streaming bodies and the event loop are left alone.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visinspect.metrics import Metrics
from visinspect.tracing import Tracing

REQUEST_ID_HEADER = b"x-request-id"
# A client's id is echoed only when it is short and harmless in a log line or header.
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

log = structlog.get_logger("visinspect.http")


def request_id_from(scope: Scope) -> str:
    """The id this middleware assigned to the request (empty outside a request)."""
    return str(scope.get("state", {}).get("request_id", ""))


class RequestObservationMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, tracing: Tracing | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.tracing = tracing  # None: traces are off

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500  # what the server sends when the app fails before it answers

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != REQUEST_ID_HEADER]
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        ids = {"request_id": request_id}
        if self.tracing is not None:  # FastAPI's server span is current: tag it, log its trace
            ids["trace_id"] = self.tracing.mark_request(request_id) or ""
        with structlog.contextvars.bound_contextvars(**ids):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                self._observe(scope, status, time.perf_counter() - started)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        method = str(scope.get("method", ""))
        route = _route_template(scope)
        self.metrics.requests.labels(route, method, str(status)).inc()
        self.metrics.request_seconds.labels(route, method).observe(seconds)
        fields: dict[str, Any] = {
            "method": method,
            "path": scope.get("path"),
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
        }
        client = scope.get("client")
        if client:
            fields["client"] = client[0]
        if status >= 500:
            log.warning("http.request", **fields)
        else:
            log.info("http.request", **fields)


def _incoming_request_id(scope: Scope) -> str | None:
    for key, value in scope.get("headers", []):
        if key == REQUEST_ID_HEADER:
            candidate = value.decode("latin-1")
            return candidate if _CLIENT_REQUEST_ID.match(candidate) else None
    return None


def _route_template(scope: Scope) -> str:
    """The matched route's path template (`/predictions/{prediction_id}`, never the raw path), so
    the number of metric series stays bounded whatever clients send."""
    route = scope.get("route")
    return str(getattr(route, "path", "unmatched")) if route is not None else "unmatched"
