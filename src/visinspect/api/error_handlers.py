"""Every error the service answers goes through here, in one body shape:

    {"error": {"code": "...", "message": "...", "request_id": "..."}}

Domain exceptions (`visinspect.errors`) map to statuses along their class hierarchy
(`STATUS_BY_ERROR`, `status_of`); anything unexpected is logged with its traceback and answered
with a 500 that reveals nothing internal.
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
from visinspect.api.headers import SECURITY_HEADERS
from visinspect.api.middleware import request_id_from

log = structlog.get_logger("visinspect.api")

# A subclass answers what its nearest listed ancestor answers (`status_of`), so a new kind of bad
# image is a 4xx like its siblings without an entry here.
STATUS_BY_ERROR: dict[type[errors.VisinspectError], int] = {
    errors.VisinspectError: 500,  # only an error class outside every family below ends here
    errors.InvalidImage: 422,
    errors.EmptyImage: 400,
    errors.UnsupportedImage: 415,
    errors.TooManyPixels: 413,
    errors.InvalidRequest: 422,
    errors.PredictionNotFound: 404,
    errors.ImageNotKept: 404,
    errors.LabelSetNotFound: 404,
    errors.HeadNotFound: 404,
    errors.AnomalyMapNotFound: 404,
    errors.TrainingUnavailable: 501,
    errors.Conflict: 409,
    errors.MissingApiKey: 401,
    errors.InvalidApiKey: 403,
    errors.ServiceUnavailable: 503,
    errors.RequestTimedOut: 504,
    errors.ClientGone: 499,  # nginx's "client closed request": logged and counted, never sent
    errors.RecordNotStored: 500,
}
RETRY_AFTER_SECONDS = "5"
_HTTP_CODES = {
    400: "malformed_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "request_too_large",
    415: "unsupported_media_type",
}
INTERNAL_ERROR_MESSAGE = "internal error; quote the request_id when reporting it"


def status_of(exc: errors.VisinspectError) -> int:
    """The HTTP status of a domain error: that of its nearest ancestor in STATUS_BY_ERROR."""
    return next(STATUS_BY_ERROR[cls] for cls in type(exc).__mro__ if cls in STATUS_BY_ERROR)


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
    # Set here too: a 500 is sent from outside the request-observation middleware.
    all_headers = {**(headers or {}), "X-Request-ID": request_id} if request_id else headers
    return JSONResponse({"error": body}, status_code=status, headers=all_headers)


def record_rejection(request: Request, exc: errors.VisinspectError) -> int:
    """Log and count a domain error; return its HTTP status. Shared by the handler below and by
    the batch endpoint, whose per-item errors never reach a handler.

    A 500 is our fault, not the client's: it is logged as an error with its cause's traceback
    (the request id is bound to the line), and its message says nothing internal.
    """
    status = status_of(exc)
    if status == 500:
        log.error("request.failed", code=exc.code, reason=exc.message, exc_info=exc)
    else:
        log.info("request.rejected", code=exc.code, status=status, reason=exc.message)
    metrics = request.app.state.metrics
    metrics.rejected.labels(exc.code).inc()
    if isinstance(exc, errors.DatabaseUnavailable):
        metrics.database_errors.inc()
    return status


def public_message(exc: errors.VisinspectError, status: int) -> str:
    return INTERNAL_ERROR_MESSAGE if status == 500 else exc.message


def domain_error_response(
    request: Request, exc: errors.VisinspectError, extra_headers: dict[str, str] | None = None
) -> JSONResponse:
    """The answer to a domain error, logged and counted. Used by the exception handler and by
    middleware that refuses before any route runs (`api/limits.py`)."""
    status = record_rejection(request, exc)
    headers = dict(extra_headers or {})
    if isinstance(exc, errors.ServiceUnavailable):  # transient: the same request may succeed later
        headers["Retry-After"] = str(exc.retry_after_s or RETRY_AFTER_SECONDS)
    elif status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    message = public_message(exc, status)
    return error_response(request, status, exc.code, message, headers=headers or None)


# What Starlette's multipart parser refuses while it parses (FastAPI applies the form limits
# that `main.py` sets on the predict routes), by the start of its message: a 400 to Starlette.
_MULTIPART_REFUSALS = {
    "Too many files": (422, "too_many_files", "MAX_BATCH_FILES"),
    "Too many fields": (422, "too_many_fields", "form fields other than files"),
    "Field exceeded maximum size": (413, "form_field_too_large", "a form field that is not a file"),
    "Part exceeded maximum size": (413, "form_field_too_large", "a form field that is not a file"),
}


def _multipart_refusal(exc: StarletteHTTPException) -> tuple[int, str, str] | None:
    detail = str(exc.detail)
    for start, (status, code, what) in _MULTIPART_REFUSALS.items():
        if exc.status_code == 400 and detail.startswith(start):
            return status, code, f"{detail.rstrip('.')} ({what}); nothing was classified"
    return None


def http_error_response(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """The answer to an HTTP-level refusal (404, 405, 408, 413, ...), with a stable code."""
    if refusal := _multipart_refusal(exc):  # the rest of the body is not worth reading
        return error_response(request, *refusal, headers={"Connection": "close"})
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = str(exc.detail)
    if exc.status_code == 413:
        message = body_too_large_message(request.app.state.settings.max_upload_bytes)
    headers = dict(exc.headers) if exc.headers else None
    return error_response(request, exc.status_code, code, message, headers=headers)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.VisinspectError)
    return domain_error_response(request, exc)


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
    return http_error_response(request, exc)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("request.failed", error_type=type(exc).__name__)
    # Sent by Starlette's outermost middleware, outside ours: add what they would have added.
    headers = {name.decode(): value.decode() for name, value in SECURITY_HEADERS}
    return error_response(request, 500, "internal_error", INTERNAL_ERROR_MESSAGE, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(errors.VisinspectError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
