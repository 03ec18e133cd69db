"""HTTP-level limits: what a connection or a request may cost before any route runs.

- **Headers** (`LimitedHttpToolsProtocol`, uvicorn's httptools protocol with limits): at most
  HTTP_MAX_HEADER_BYTES of request line and headers and HTTP_MAX_HEADERS fields (431), all of it
  within HTTP_HEADER_TIMEOUT_S of the connection opening or the request starting (408): a
  slowloris client trickling its headers is cut off, and nothing waits for a request that never
  comes.
- **Slow readers** (`LimitedHttpToolsProtocol` too): a response the client stops reading (the
  socket's buffers full, nothing drained) for HTTP_WRITE_TIMEOUT_S is cut: the connection is
  aborted, the rest of the response is dropped, and the request's concurrency slot is freed
  (counted in `visinspect_http_slow_readers_cut_total`). Without it, a client that asks for a
  large response (a kept image, a page of 1,000-class rows) and never reads would hold a slot
  for as long as it keeps the connection open.
- **Body** (`RequestBodyLimitsMiddleware`): a declared Content-Length over MAX_UPLOAD_BYTES is
  refused before a byte is read, a chunked body is counted as it arrives (413), and the whole body
  must arrive within HTTP_BODY_TIMEOUT_S (408), so no request holds more than MAX_UPLOAD_BYTES in
  memory or in a spooled file, nor a connection forever.
- **Concurrency** (`ConcurrencyLimitMiddleware`): at most MAX_CONCURRENT_REQUESTS requests in
  progress; more are answered 503 `overloaded` at once, with Retry-After. The probes and the
  page's and docs' static files are outside the cap (`UNCAPPED_PREFIXES`).

Every refusal is the service's JSON error body with the security headers.
(FastAPI's own `max_body_size` answers in plain text when a route never reads the body.)
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import anyio
import httptools
import structlog
from prometheus_client import Counter
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from visinspect.api.error_handlers import (
    RETRY_AFTER_SECONDS,
    body_too_large_message,
    error_response,
    http_error_response,
)
from visinspect.api.headers import SECURITY_HEADERS
from visinspect.config import Settings

log = structlog.get_logger("visinspect.http")


class _BodyRefused(HTTPException):
    """Raised from `receive`. FastAPI's body parsing hands it to the JSON error handler
    (`api/error_handlers.py`); raised elsewhere, the middleware below answers it through the same
    `http_error_response`. Either way the connection is closed: the rest of the body is not
    worth reading."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(status_code, detail, headers={"Connection": "close"})


class RequestBodyLimitsMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._refuse(scope, receive, send, self._too_large())
            return
        deadline = anyio.current_time() + self.body_timeout_s
        received = 0
        body_complete = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, body_complete
            if body_complete:  # later receives wait for a disconnect: no deadline applies
                return await receive()
            try:
                with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                    message = await receive()
            except TimeoutError:
                raise self._too_slow() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._too_large()
                body_complete = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyRefused as refusal:
            if response_started:
                raise
            await self._refuse(scope, receive, send, refusal)

    def _too_large(self) -> _BodyRefused:
        return _BodyRefused(413, body_too_large_message(self.max_body_bytes))

    def _too_slow(self) -> _BodyRefused:
        return _BodyRefused(
            408,
            f"the request body did not arrive within {self.body_timeout_s} s (HTTP_BODY_TIMEOUT_S)",
        )

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, refusal: _BodyRefused
    ) -> None:
        response = http_error_response(Request(scope, receive), refusal)
        await response(scope, receive, send)


# Never refused for overload: the probes, which must answer while the service is full, and the
# page's and the docs' files, which are cheap to send and must not take the slots /predict needs
# (a client asking for the 1 MB docs bundle and not reading it held one; the write timeout
# bounds such a connection, MAX_CONNECTIONS their number).
UNCAPPED_PREFIXES = ("/health", "/static/", "/docs-assets/")


class ConcurrencyLimitMiddleware:
    """At most `limit` requests in progress in this process; the next is refused at once."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_progress = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(UNCAPPED_PREFIXES):
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.limit:
            response = error_response(
                Request(scope, receive),
                503,
                "overloaded",
                f"{self.limit} requests are already in progress (MAX_CONCURRENT_REQUESTS); "
                "retry shortly",
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            )
            await response(scope, receive, send)
            return
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1


class _HeadersRefused(Exception):
    pass


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with limits on the request line and headers.

    Class attributes, set once per process by `configure` (uvicorn builds one protocol object per
    connection and offers no other way in); `create_app` calls it, so every worker has them.
    """

    max_header_bytes: ClassVar[int] = 16 * 1024
    max_headers: ClassVar[int] = 100
    header_timeout_s: ClassVar[float] = 10.0
    write_timeout_s: ClassVar[float] = 15.0
    slow_readers_cut: ClassVar[Counter | None] = None

    @classmethod
    def configure(cls, settings: Settings, slow_readers_cut: Counter) -> None:
        cls.max_header_bytes = settings.http_max_header_bytes
        cls.max_headers = settings.http_max_headers
        cls.header_timeout_s = settings.http_header_timeout_s
        cls.write_timeout_s = settings.http_write_timeout_s
        cls.slow_readers_cut = slow_readers_cut

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0  # request line and header fields, as parsed
        self._unparsed_bytes = 0  # bytes fed while the headers were incomplete
        self._header_count = 0
        self._reading_headers = True
        self._refusal: tuple[int, str, str] | None = None
        self._header_deadline: asyncio.TimerHandle | None = None
        self._write_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_clock()
        self._stop_write_clock()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The transport's buffer is full: the client has not read what was sent. Unless it
        reads within the write timeout, the connection goes (`_reader_too_slow`)."""
        super().pause_writing()
        self._stop_write_clock()
        self._write_deadline = self.loop.call_later(self.write_timeout_s, self._reader_too_slow)

    def resume_writing(self) -> None:
        self._stop_write_clock()
        super().resume_writing()

    def _stop_write_clock(self) -> None:
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def _reader_too_slow(self) -> None:
        """Abort: uvicorn's `connection_lost` marks the response's cycle disconnected and wakes
        its pending write, so the app's remaining sends return at once and the request ends."""
        self._write_deadline = None
        if not self.transport.is_closing():
            if self.slow_readers_cut is not None:
                self.slow_readers_cut.inc()
            log.warning("http.slow_reader_cut", client=self.client, timeout_s=self.write_timeout_s)
            self.transport.abort()

    def _start_headers(self) -> None:
        self._header_bytes = self._unparsed_bytes = self._header_count = 0
        self._reading_headers = True
        self._stop_header_clock()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _stop_header_clock(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def data_received(self, data: bytes) -> None:
        if self._reading_headers:
            self._unparsed_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()  # no WebSockets here
        except httptools.HttpParserError:
            self._refuse(*(self._refusal or (400, "bad_request", "invalid HTTP request")))
            return
        if self._reading_headers and self._unparsed_bytes > self.max_header_bytes:
            self._refuse(*self._too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._reading_headers:  # the next request on a kept-alive connection
            self._start_headers()

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.max_headers:
            self._refusal = (
                431,
                "too_many_headers",
                f"more than {self.max_headers} header fields (HTTP_MAX_HEADERS)",
            )
            raise _HeadersRefused
        self._count_header_bytes(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._stop_header_clock()
        super().on_headers_complete()

    def _count_header_bytes(self, count: int) -> None:
        self._header_bytes += count
        if self._header_bytes > self.max_header_bytes:
            self._refusal = self._too_large()
            raise _HeadersRefused

    def _too_large(self) -> tuple[int, str, str]:
        return (
            431,
            "headers_too_large",
            f"the request line and headers exceed {self.max_header_bytes} bytes "
            "(HTTP_MAX_HEADER_BYTES)",
        )

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self._reading_headers and not self.transport.is_closing():
            self._refuse(
                408,
                "request_timeout",
                f"the request headers did not arrive within {self.header_timeout_s} s "
                "(HTTP_HEADER_TIMEOUT_S)",
            )

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer at the protocol level (no app, no request id yet) and close the connection."""
        self._stop_header_clock()
        if self.transport.is_closing():
            return
        body = json.dumps({"error": {"code": code, "message": message, "request_id": ""}}).encode()
        reason = {
            400: b"Bad Request",
            408: b"Request Timeout",
            431: b"Request Header Fields Too Large",
        }
        head = [
            b"HTTP/1.1 %d %s" % (status, reason[status]),
            b"content-type: application/json",
            b"content-length: %d" % len(body),
            b"connection: close",
            *(name + b": " + value for name, value in SECURITY_HEADERS),
        ]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()
