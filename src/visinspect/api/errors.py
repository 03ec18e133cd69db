"""Every error the service answers goes through here, in one body shape:

    {"error": {"code": "...", "message": "...", "request_id": "..."}}

Domain exceptions map to statuses in `STATUS_BY_ERROR`; anything unexpected is logged with its
traceback and answered with a 500 that reveals nothing internal.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from visinspect import errors
from visinspect.logging import request_id_from

log = structlog.get_logger("visinspect.api")

STATUS_BY_ERROR: dict[type[errors.VisinspectError], int] = {
    errors.EmptyImage: 400,
    errors.NotAnImage: 415,
    errors.UnsupportedImageFormat: 415,
    errors.AnimatedImage: 415,
    errors.CorruptImage: 422,
    errors.ImageTooLarge: 413,
    errors.PredictionNotFound: 404,
    errors.InvalidTimeRange: 422,
    errors.DatabaseUnavailable: 503,
    errors.Overloaded: 503,
    errors.RequestTimedOut: 504,
    errors.TooManyFiles: 422,
    errors.MissingApiKey: 401,
    errors.InvalidApiKey: 403,
}
RETRY_AFTER_SECONDS = "5"
_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def body_too_large_message(limit: int) -> str:
    return f"request body is larger than the limit of {limit} bytes (MAX_UPLOAD_BYTES)"


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    request_id = request_id_from(request.scope)
    body: dict[str, Any] = {"code": code, "message": message, "request_id": request_id}
    if details is not None:
        body["details"] = details
    # Set here too: a 500 is sent from outside the request-id middleware.
    all_headers = {**(headers or {}), "X-Request-ID": request_id} if request_id else headers
    return JSONResponse({"error": body}, status_code=status, headers=all_headers)


def record_rejection(request: Request, exc: errors.VisinspectError) -> int:
    """Log and count a domain error; return its HTTP status. Shared by the handler below and by
    the batch endpoint, whose per-item errors never reach a handler."""
    status = STATUS_BY_ERROR.get(type(exc), 400)
    log.info("request.rejected", code=exc.code, status=status, reason=exc.message)
    metrics = request.app.state.metrics
    metrics.rejected.labels(exc.code).inc()
    if isinstance(exc, errors.DatabaseUnavailable):
        metrics.database_errors.inc()
    return status


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.VisinspectError)
    status = record_rejection(request, exc)
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status == 503 else None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(request, status, exc.code, exc.message, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in jsonable_encoder(exc.errors())
    ]
    summary = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in details)
    return error_response(request, 422, "validation_error", summary, details=details)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = str(exc.detail)
    if exc.status_code == 413:
        message = body_too_large_message(request.app.state.settings.max_upload_bytes)
    headers = dict(exc.headers) if exc.headers else None
    return error_response(request, exc.status_code, code, message, headers=headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("request.failed", error_type=type(exc).__name__)
    return error_response(
        request, 500, "internal_error", "internal error; quote the request_id when reporting it"
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(errors.VisinspectError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
