"""Optional API keys (API_KEYS): parsed, checked per route (`require_api_key`, for OpenAPI) and
before any body is read (`ApiKeyGateMiddleware`).

Keys are kept as SHA-256 digests and compared in constant time; API_KEYS may hold the digests
themselves (`sha256:<hex>`), so the plaintext need not live in the environment. An entry may carry
a name (`alice:<key>` or `alice:sha256:<hex>`): a review records who made it by that name; an
unnamed key is `key-` and its position in API_KEYS (nothing derived from the key). A key is read
from `Authorization: Bearer <key>` or `X-API-Key: <key>` and never logged.

A named key may be limited to scopes (`camera-1@predict:<key>`, `alice@read+review:<key>`):
`predict` (POST /predict, /predict/batch), `read` (every GET of the history, images, label sets
and heads), `review` (reviews and labels), `admin` (everything, including label sets and heads).
A key without scopes may do everything, as before scopes existed. A key without the scope a route
needs gets 403 `insufficient_scope`, which names both. An entry that does not parse, or a
plaintext key shorter than API_KEY_MIN_LENGTH, stops the start (`config.parse_api_key`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from visinspect.api.error_handlers import domain_error_response
from visinspect.config import parse_api_key
from visinspect.errors import (
    InsufficientScope,
    InvalidApiKey,
    MissingApiKey,
    VisinspectError,
)

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <API key>")


# Routes that need a key when API_KEYS is set (the same routes declare it for OpenAPI).
PROTECTED_PREFIXES = ("/predict", "/predictions", "/label-sets", "/heads")


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    digest: bytes
    scopes: frozenset[str]  # "admin" may do everything

    def may(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


class ApiKeys:
    def __init__(self, keys: list[SecretStr]) -> None:
        self._keys = [_parse(key.get_secret_value(), n) for n, key in enumerate(keys, start=1)]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def matching(self, presented: str) -> ApiKey | None:
        """The matching key, or None. Every key is compared: the time does not tell which one
        matched."""
        digest = hashlib.sha256(presented.encode()).digest()
        matched = None
        for key in self._keys:
            if hmac.compare_digest(key.digest, digest):
                matched = key
        return matched


def _parse(entry: str, position: int) -> ApiKey:
    """An ApiKey of an entry the settings checked (`config.parse_api_key`)."""
    parsed = parse_api_key(entry, position)
    return ApiKey(parsed.name or f"key-{position}", parsed.digest, parsed.scopes)


def required_scope(method: str, path: str) -> str:
    """The scope a protected route needs: what a device, a viewer, a reviewer may do."""
    if method in ("GET", "HEAD"):
        return "read"
    if method == "POST" and path in ("/predict", "/predict/batch"):
        return "predict"
    if (
        method == "POST"
        and path.startswith("/predictions/")
        and path.endswith(("/review", "/labels"))
    ):
        return "review"
    return "admin"


def presented_key(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else headers.get("x-api-key")


def check_api_key(keys: ApiKeys, headers: Mapping[str, str], method: str, path: str) -> str | None:
    """The key's name: 401 without a key, 403 with a wrong one or one without the route's
    scope; None when API_KEYS is empty. Reads headers only, so `ApiKeyGateMiddleware` can run it
    before a body is read."""
    if not keys.enabled:
        return None
    presented = presented_key(headers)
    if not presented:
        raise MissingApiKey("this route needs an API key: Authorization: Bearer <key> or X-API-Key")
    key = keys.matching(presented)
    if key is None:
        raise InvalidApiKey("the API key is not valid")
    needed = required_scope(method, path)
    if not key.may(needed):
        raise InsufficientScope(
            f"the key {key.name!r} may {' and '.join(sorted(key.scopes))} only; "
            f"{method} {path} needs the {needed!r} scope"
        )
    return key.name


async def require_api_key(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),  # noqa: B008
    header: str | None = Security(_header),
) -> None:
    """Declares the key in OpenAPI and checks it again for routes the gate does not cover."""
    check_api_key(request.app.state.api_keys, request.headers, request.method, request.url.path)


async def key_name(request: Request) -> str | None:
    """Who is calling, by the name of their API key (None when keys are off): a reviewer."""
    return check_api_key(
        request.app.state.api_keys, request.headers, request.method, request.url.path
    )


class ApiKeyGateMiddleware:
    """API keys are checked from the headers, before a protected route's body is read."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and self.keys.enabled
            and scope.get("method") != "OPTIONS"  # CORS preflights carry no key
            and str(scope.get("path", "")).startswith(PROTECTED_PREFIXES)
        ):
            request = Request(scope, receive)
            try:
                check_api_key(self.keys, request.headers, request.method, request.url.path)
            except VisinspectError as exc:
                # The unread body is not worth reading: close the connection after the answer.
                response = domain_error_response(request, exc, {"Connection": "close"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
