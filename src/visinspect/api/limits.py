"""The request-body limit (MAX_UPLOAD_BYTES), enforced on every route while the body streams in.

A declared Content-Length over the limit is refused before a byte is read. A body without one
(chunked) is counted as it arrives and cut off at the limit, so no request ever holds more than
MAX_UPLOAD_BYTES in memory or in a spooled temporary file.

(FastAPI's own `max_body_size` answers in plain text when a route never reads the body; this one
always answers with the service's JSON error body.)
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visinspect.api.errors import body_too_large_message, error_response


class BodyTooLarge(HTTPException):
    """Raised from `receive`; FastAPI passes HTTPExceptions from body parsing through unchanged,
    so the JSON error handler answers it."""

    def __init__(self) -> None:
        super().__init__(status_code=413, headers={"Connection": "close"})


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._refuse(scope, receive, send)
            return

        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if response_started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            Request(scope, receive),
            413,
            "request_too_large",
            body_too_large_message(self.max_body_bytes),
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)
