"""Optional API keys (API_KEYS) and HTTP hardening: security headers, CORS only when configured.

Keys are kept as SHA-256 digests and compared in constant time; API_KEYS may hold the digests
themselves (`sha256:<hex>`), so the plaintext need not live in the environment. A key is read from
`Authorization: Bearer <key>` or `X-API-Key: <key>` and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visinspect.errors import InvalidApiKey, MissingApiKey

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <API key>")


class ApiKeys:
    def __init__(self, keys: list[SecretStr]) -> None:
        self._digests = [_digest_of(key.get_secret_value()) for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def accepts(self, presented: str) -> bool:
        digest = hashlib.sha256(presented.encode()).digest()
        matched = False
        for known in self._digests:  # no early exit: the time does not tell which key matched
            matched |= hmac.compare_digest(known, digest)
        return matched


def _digest_of(entry: str) -> bytes:
    if entry.startswith("sha256:"):
        return bytes.fromhex(entry.removeprefix("sha256:"))
    return hashlib.sha256(entry.encode()).digest()


def check_api_key(keys: ApiKeys, headers: Mapping[str, str]) -> None:
    """401 without a key, 403 with a wrong one; a no-op when API_KEYS is empty. Reads headers
    only, so `api/limits.ApiKeyGateMiddleware` can run it before a body is read."""
    if not keys.enabled:
        return
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    presented = credentials.strip() if scheme.lower() == "bearer" else headers.get("x-api-key")
    if not presented:
        raise MissingApiKey("this route needs an API key: Authorization: Bearer <key> or X-API-Key")
    if not keys.accepts(presented):
        raise InvalidApiKey("the API key is not valid")


async def require_api_key(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),  # noqa: B008
    header: str | None = Security(_header),
) -> None:
    """Declares the key in OpenAPI and checks it again for routes the gate does not cover."""
    check_api_key(request.app.state.api_keys, request.headers)


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
# Swagger UI's page has an inline bootstrap script and inline styles; everything else is ours.
_DOCS_CSP = (
    b"content-security-policy",
    b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data:; frame-ancestors 'none'",
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
