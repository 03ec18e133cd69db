"""The application factory. The lifespan starts the services and tears them down.

`visinspect serve` runs `startup.prepare` (weights, database, schema, model) before the server
starts and hands the result to `create_app`, so a broken deployment ends with one `startup.failed`
line and exit code 1. An app started any other way (tests, `uvicorn --factory`) prepares in its
lifespan, along the same path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
import structlog
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from visinspect import __version__
from visinspect.api.error_handlers import install_error_handlers
from visinspect.api.headers import SecurityHeadersMiddleware
from visinspect.api.limits import (
    ConcurrencyLimitMiddleware,
    LimitedHttpToolsProtocol,
    RequestBodyLimitsMiddleware,
)
from visinspect.api.middleware import RequestObservationMiddleware
from visinspect.api.routes import drift, heads, health, history, images, labels, predict, reviews
from visinspect.api.routes import metrics as metrics_route
from visinspect.api.routes.docs import mount_docs
from visinspect.api.routes.ui import mount_ui
from visinspect.api.security import ApiKeyGateMiddleware, ApiKeys
from visinspect.config import Settings
from visinspect.logging import configure_logging
from visinspect.memory import freeze_startup_heap, limit_malloc_arenas
from visinspect.metrics import Metrics
from visinspect.startup import Prepared, StartupFailed, open_services, prepare
from visinspect.tracing import TELEMETRY_OFF, Tracing

log = structlog.get_logger("visinspect")

# Form fields that are not files, per request to the predict routes, and the bytes of each
# (held in memory while parsed): the routes read none, so a few small ones are plenty.
FORM_MAX_FIELDS = 8
FORM_MAX_FIELD_BYTES = 16 * 1024


def create_app(
    settings: Settings | None = None,
    prepared: Prepared | None = None,
    tracing: Tracing | None = None,
) -> FastAPI:
    """`tracing`: for tests (an in-memory exporter); else from the settings (OTEL_*), or off."""
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format)
    limit_malloc_arenas(settings.malloc_arena_max)  # before the lifespan starts its threads
    tracing = tracing or Tracing.from_settings(settings)
    app = FastAPI(
        telemetry=tracing.fastapi_telemetry() if tracing is not None else TELEMETRY_OFF,
        title="Visual Inspection Service",
        version=__version__,
        summary="ImageNet top-k classification with a pretrained EfficientNet; every prediction stored.",
        lifespan=_lifespan,
        docs_url=None,  # served by api/routes/docs.py without a CDN
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
    )
    app.state.settings = settings
    app.state.prepared = prepared
    app.state.metrics = Metrics(settings.prometheus_multiproc_dir)
    app.state.api_keys = ApiKeys(settings.api_keys)
    app.state.tracing = tracing
    install_error_handlers(app)
    # Checked by the multipart parser as it goes (a 17th file is refused before it is read);
    # the predict routes take files only, so other fields are few and small.
    app.include_router(
        predict.router,
        form_limits={
            "max_files": settings.max_batch_files,
            "max_fields": FORM_MAX_FIELDS,
            "max_part_size": FORM_MAX_FIELD_BYTES,
        },
    )
    # /predictions/quality and /predictions/drift before history's /predictions/{prediction_id}.
    app.include_router(reviews.router)
    app.include_router(drift.router)
    app.include_router(history.router)
    app.include_router(images.router)
    app.include_router(labels.router)
    app.include_router(heads.router)
    app.include_router(health.router)
    app.include_router(metrics_route.router)
    if settings.docs_enabled:
        mount_docs(app)
    mount_ui(app)
    app.router.redirect_slashes = False  # a redirect would be built from the client's Host header
    # Header limits and the write timeout, for the server in this process.
    LimitedHttpToolsProtocol.configure(settings, app.state.metrics.slow_readers_cut)
    # Innermost first: body limits, then keys (checked before the body is read), concurrency.
    app.add_middleware(
        RequestBodyLimitsMiddleware,
        max_body_bytes=settings.max_upload_bytes,
        body_timeout_s=settings.http_body_timeout_s,
    )
    app.add_middleware(ApiKeyGateMiddleware, keys=app.state.api_keys)
    app.add_middleware(ConcurrencyLimitMiddleware, limit=settings.max_concurrent_requests)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "X-Request-ID", "Content-Type"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(SecurityHeadersMiddleware)
    # Outermost: every response gets its id, one log line and its metrics.
    app.add_middleware(
        RequestObservationMiddleware, metrics=app.state.metrics, tracing=app.state.tracing
    )
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    prepared: Prepared | None = app.state.prepared
    if prepared is None:  # started by something other than `visinspect serve`
        try:
            prepared = await anyio.to_thread.run_sync(prepare, settings)
        except StartupFailed as exc:
            exc.log()
            raise
    metrics: Metrics = app.state.metrics
    tracing: Tracing | None = app.state.tracing
    try:
        async with open_services(settings, prepared, metrics, tracing) as services:
            identity = services.classifier.identity
            metrics.set_model(identity.name, identity.version, identity.backend, identity.precision)
            app.state.services = services
            log.info(
                "startup.ready",
                model_name=identity.name,
                model_version=identity.version,
                backend=identity.backend,
                precision=identity.precision,
                frozen_objects=freeze_startup_heap(),
            )
            try:
                yield
            finally:
                # uvicorn runs this only after in-flight requests finished (or its timeout passed).
                log.info("shutdown.begin")
    finally:
        prepared.close()
        if tracing is not None:
            await anyio.to_thread.run_sync(tracing.shutdown)  # exports what is buffered
