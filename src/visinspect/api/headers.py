"""The security headers every answer carries: nosniff, no framing, no referrer, and a content
security policy per kind of page (the API's, the docs', the inspection page's)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
_API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
# What an API answer carries; also sent by answers made outside the middleware stack (the 500
# of Starlette's outermost error middleware, and the protocol's own 400/408/431).
SECURITY_HEADERS = [*_COMMON_HEADERS, _API_CSP]
# Swagger UI's page (api/routes/docs.py): its bundle and our starter, no inline script or style.
_DOCS_CSP = (
    b"content-security-policy",
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
)


# The inspection page: our own script and style only; previews are blob: URLs.
_UI_CSP = (
    b"content-security-policy",
    b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
)


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path.startswith("/docs"):
            csp = _DOCS_CSP
        elif path == "/" or path.startswith("/static/"):
            csp = _UI_CSP
        else:
            csp = _API_CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [*message.get("headers", []), *_COMMON_HEADERS, csp],
                }
            await send(message)

        await self.app(scope, receive, send_with_headers)
