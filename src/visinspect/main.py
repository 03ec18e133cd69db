"""The application factory. The lifespan builds the long-lived parts, in order, and tears them down.

Start-up order: logging -> database engine -> schema (migrations, or create_all in development) ->
model. If any step fails the process exits with one clear log line instead of serving half-ready.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
import structlog
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from visinspect import __version__
from visinspect.api.errors import install_error_handlers
from visinspect.api.limits import BodySizeLimitMiddleware
from visinspect.api.routes import health, predict, predictions
from visinspect.api.routes import metrics as metrics_route
from visinspect.api.routes.docs import mount_docs
from visinspect.api.routes.ui import mount_ui
from visinspect.api.security import ApiKeys, SecurityHeadersMiddleware
from visinspect.config import Settings
from visinspect.db.schema import create_all_for_development, upgrade_to_head
from visinspect.db.session import Database, create_db_engine
from visinspect.db.writer import PredictionWriter
from visinspect.inference.batcher import MicroBatcher
from visinspect.inference.model import load_classifier
from visinspect.inference.runner import InferenceRunner
from visinspect.logging import RequestContextMiddleware, configure_logging
from visinspect.memory import limit_malloc_arenas
from visinspect.metrics import Metrics, MetricsMiddleware

log = structlog.get_logger("visinspect")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format)
    limit_malloc_arenas(settings.malloc_arena_max)  # before the lifespan starts its threads
    app = FastAPI(
        title="Visual Inspection Service",
        version=__version__,
        summary="ImageNet top-k classification with a pretrained EfficientNet; every prediction stored.",
        lifespan=_lifespan,
        docs_url=None,  # served by api/routes/docs.py without a CDN
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.api_keys = ApiKeys(settings.api_keys)
    install_error_handlers(app)
    app.include_router(predict.router)
    app.include_router(predictions.router)
    app.include_router(health.router)
    app.include_router(metrics_route.router)
    if settings.docs_enabled:
        mount_docs(app)
    mount_ui(app)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_upload_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "X-Request-ID", "Content-Type"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(RequestContextMiddleware)  # outermost: every response gets its id
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    database = Database(create_db_engine(settings), settings.database_pool_size)
    log.info("startup.begin", database=database.describe(), model_arch=settings.model_arch.value)
    try:
        await anyio.to_thread.run_sync(_prepare_schema, database, settings)
        classifier = await anyio.to_thread.run_sync(load_classifier, settings)
    except BaseException:
        database.dispose()
        raise
    metrics: Metrics = app.state.metrics
    batcher = MicroBatcher(
        classifier,
        settings.max_batch_size,
        settings.batch_max_wait_ms,
        settings.max_queue,
        on_batch=metrics.observe_batch,
    )
    batcher.start()
    metrics.watch_queue(lambda: batcher.queued)
    metrics.model.info(
        {
            "model_name": classifier.model_name,
            "model_version": classifier.model_version,
            "backend": classifier.backend_name,
        }
    )
    writer = PredictionWriter(database)
    writer.start()
    app.state.database = database
    app.state.writer = writer
    app.state.runner = InferenceRunner(
        classifier, batcher, settings.max_image_pixels, settings.decode_threads
    )
    log.info(
        "startup.ready",
        model_name=classifier.model_name,
        model_version=classifier.model_version,
        backend=classifier.backend_name,
    )
    try:
        yield
    finally:
        # uvicorn runs this only after in-flight requests finished (or its timeout passed).
        log.info("shutdown.begin")
        await batcher.close()
        await writer.close()
        database.dispose()
        log.info(
            "shutdown.complete",
            batches=batcher.stats.batches,
            images=batcher.stats.images,
            largest_batch=batcher.stats.largest,
        )


def _prepare_schema(database: Database, settings: Settings) -> None:
    if settings.database_create_all:
        create_all_for_development(database.engine)
    else:
        upgrade_to_head(database.engine)
