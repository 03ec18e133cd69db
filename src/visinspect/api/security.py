"""Optional API keys (API_KEYS): parsed, checked per route (`require_api_key`, for OpenAPI) and
before any body is read (`ApiKeyGateMiddleware`).

Keys are kept as SHA-256 digests and compared in constant time; API_KEYS may hold the digests
themselves (`sha256:<hex>`), so the plaintext need not live in the environment. An entry may carry
a name (`alice:<key>` or `alice:sha256:<hex>`): a review records who made it by that name; an
unnamed key is `key-` and the first 8 hex digits of its digest. A key is read from
`Authorization: Bearer <key>` or `X-API-Key: <key>` and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from visinspect.api.error_handlers import domain_error_response
from visinspect.errors import InvalidApiKey, MissingApiKey, VisinspectError

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <API key>")


# Routes that need a key when API_KEYS is set (the same routes declare it for OpenAPI).
PROTECTED_PREFIXES = ("/predict", "/predictions", "/label-sets", "/heads")
_NAMED = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_.-]{0,63}):(?P<key>.+)$")


class ApiKeys:
    def __init__(self, keys: list[SecretStr]) -> None:
        self._keys = [_parse(key.get_secret_value()) for key in keys]  # (name, digest)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def name_of(self, presented: str) -> str | None:
        """The matching key's name, or None. Every key is compared: the time does not tell
        which one matched."""
        digest = hashlib.sha256(presented.encode()).digest()
        matched = None
        for name, known in self._keys:
            if hmac.compare_digest(known, digest):
                matched = name
        return matched


def _parse(entry: str) -> tuple[str, bytes]:
    """`[name:]key` or `[name:]sha256:<hex>` -> (name, digest)."""
    named = _NAMED.match(entry)
    if named is not None and named["name"] != "sha256":
        name, entry = named["name"], named["key"]
    else:
        name = None
    if entry.startswith("sha256:"):
        digest = bytes.fromhex(entry.removeprefix("sha256:"))
    else:
        digest = hashlib.sha256(entry.encode()).digest()
    return name or f"key-{digest.hex()[:8]}", digest


def presented_key(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else headers.get("x-api-key")


def check_api_key(keys: ApiKeys, headers: Mapping[str, str]) -> str | None:
    """The key's name: 401 without a key, 403 with a wrong one; None when API_KEYS is empty.
    Reads headers only, so `api/limits.ApiKeyGateMiddleware` can run it before a body is read."""
    if not keys.enabled:
        return None
    presented = presented_key(headers)
    if not presented:
        raise MissingApiKey("this route needs an API key: Authorization: Bearer <key> or X-API-Key")
    name = keys.name_of(presented)
    if name is None:
        raise InvalidApiKey("the API key is not valid")
    return name


async def require_api_key(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),  # noqa: B008
    header: str | None = Security(_header),
) -> None:
    """Declares the key in OpenAPI and checks it again for routes the gate does not cover."""
    check_api_key(request.app.state.api_keys, request.headers)


async def key_name(request: Request) -> str | None:
    """Who is calling, by the name of their API key (None when keys are off): a reviewer."""
    return check_api_key(request.app.state.api_keys, request.headers)


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
                check_api_key(self.keys, request.headers)
            except VisinspectError as exc:
                # The unread body is not worth reading: close the connection after the answer.
                response = domain_error_response(request, exc, {"Connection": "close"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
