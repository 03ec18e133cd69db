"""Refuse a body that declares itself too large before a single byte of it is read.

Bodies without a Content-Length (chunked) are counted while they stream in by FastAPI's own
`max_body_size`, set to the same limit in `create_app`; together no route ever holds more than
MAX_UPLOAD_BYTES of a request in memory or on disk.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from visinspect.api.errors import body_too_large_message, error_response


class DeclaredSizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = Headers(scope=scope).get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                request = Request(scope, receive)
                response = error_response(
                    request,
                    413,
                    "request_too_large",
                    body_too_large_message(self.max_body_bytes),
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
