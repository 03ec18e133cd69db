"""The one start-up path, shared by `visinspect serve`, the app's lifespan, `visinspect classify`
and the container (whose entrypoint is `visinspect serve`).

`prepare(settings)` does the work that can fail for reasons an operator must fix, in this order:
load the model (the artifact in MODEL_DIR, checked against its manifest), reach the database
(waiting up to DATABASE_WAIT_S), migrate the schema to the head (MIGRATE_ON_START) or verify that it
is there. Each failure is a
`StartupFailed` naming the part, the cause and what to do; callers log it as one `startup.failed`
line and exit 1.

`open_services(settings, prepared)` then starts the background parts (micro-batcher, group-commit
writer) and builds the services; leaving it drains and stops them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import anyio.to_thread
import structlog

from visinspect.config import Settings
from visinspect.db import partitions, retention
from visinspect.db.schema import prepare_schema
from visinspect.db.session import Database, create_db_engine, wait_for_database
from visinspect.db.writer import PredictionWriter
from visinspect.errors import DatabaseUnavailable, StartupFailed
from visinspect.inference.anomaly import PatchExtractor, load_patch_extractor
from visinspect.inference.batcher import MicroBatcher
from visinspect.inference.classifier import Classifier, ModelLoadError, check_model, load_classifier
from visinspect.inference.decoders import DecoderLimits, DecoderPool, start_forkserver
from visinspect.inference.runner import InferenceRunner
from visinspect.metrics import Metrics
from visinspect.services.drift import DriftService, DriftThresholds, parse_duration
from visinspect.services.heads import HeadRegistry, HeadService
from visinspect.services.health import ReadinessService
from visinspect.services.history import HistoryService
from visinspect.services.images import ImageService
from visinspect.services.labels import LabelService
from visinspect.services.predict import PredictService
from visinspect.services.reviews import ReviewService
from visinspect.storage.image_store import ImageStore, open_image_store
from visinspect.tracing import Tracing

__all__ = ["Prepared", "Services", "StartupFailed", "open_services", "prepare", "prepare_shared"]

log = structlog.get_logger("visinspect")


@dataclass(frozen=True, slots=True)
class Prepared:
    """What start-up produced: a database at the expected schema, a loaded model and, when
    IMAGE_STORE_DIR is set, a writable image store."""

    database: Database
    classifier: Classifier
    image_store: ImageStore | None = None
    patches: PatchExtractor | None = None  # the detectors' patch graph, when the artifact has it

    def close(self) -> None:
        self.database.dispose()


def prepare(settings: Settings) -> Prepared:
    """Check and load everything the service needs; raise StartupFailed if anything is wrong."""
    _log_begin(settings)
    start_forkserver()  # the decoders' process server starts while the model loads
    with _model_failure():
        classifier = load_classifier(settings)  # the artifact's checks are cheap: first
    patches = load_patch_extractor(settings)
    image_store = open_image_store(settings)
    return Prepared(prepare_database(settings), classifier, image_store, patches)


def prepare_shared(settings: Settings) -> None:
    """What several server processes must do once, not each: check the model artifact (each
    worker then loads it) and migrate the schema. The supervisor runs this before any worker."""
    _log_begin(settings)
    with _model_failure():
        check_model(settings)
    prepare_database(settings).dispose()


def prepare_database(settings: Settings) -> Database:
    """A reachable database at the expected schema (migrated first when MIGRATE_ON_START), and
    the serving process's own engine on it (with DATABASE_STATEMENT_TIMEOUT_S: migrations, on
    an engine of their own, are exempt)."""
    database = Database(create_db_engine(settings, serving=True), settings.database_pool_size)
    # SQLite has no statement timeout (and an in-memory database lives in its one engine).
    sqlite = database.engine.dialect.name == "sqlite"
    migrating = database.engine if sqlite else create_db_engine(settings)
    try:
        log.info("startup.database", database=database.describe())
        wait_for_database(migrating, settings.database_wait_s)
        prepare_schema(migrating, settings)
    except BaseException:
        database.dispose()
        raise
    finally:
        if not sqlite:
            migrating.dispose()
    return database


@contextmanager
def _model_failure() -> Iterator[None]:
    """A model that cannot be served is a start-up failure with the loader's own advice."""
    try:
        yield
    except ModelLoadError as exc:
        raise StartupFailed("model", str(exc), exc.action) from exc


def _log_begin(settings: Settings) -> None:
    log.info(
        "startup.begin",
        model_arch=settings.model_arch.value,
        backend=settings.inference_backend.value,
        precision=settings.model_precision.value,
        migrate_on_start=settings.migrate_on_start,
    )


@dataclass(frozen=True, slots=True)
class Services:
    """The use cases the API and the CLI call, and what /health and /metrics look at."""

    predict: PredictService
    history: HistoryService
    reviews: ReviewService
    drift: DriftService
    images: ImageService
    readiness: ReadinessService
    labels: LabelService
    heads: HeadService
    classifier: Classifier
    batcher: MicroBatcher
    decoders: DecoderPool


def _detector_failure(metrics: Metrics | None) -> Callable[[int, str, str], None] | None:
    """A detector skipped at answer time counts where a head's does."""
    if metrics is None:
        return None
    return lambda _head_id, reason, _detail: metrics.observe_head_failure(reason)


@asynccontextmanager
async def open_services(
    settings: Settings,
    prepared: Prepared,
    metrics: Metrics | None = None,
    tracing: Tracing | None = None,
) -> AsyncIterator[Services]:
    """Start the batcher and the writer, build the services; on exit, stop both after writing
    what is queued (the server has drained its requests by then). `metrics` observes them;
    `tracing` (None: off) records each classification's spans."""
    batcher = MicroBatcher(
        prepared.classifier,
        settings.max_batch_size,
        settings.batch_max_wait_ms,
        settings.max_queue,
        on_batch=metrics.observe_batch if metrics else None,
        on_queue=metrics.queue_depth.set if metrics else None,
        lanes=settings.inference_lanes,
        patches=prepared.patches,
        on_detector_failure=_detector_failure(metrics),
    )
    writer = PredictionWriter(prepared.database)
    decoders = DecoderPool(
        DecoderLimits(
            prepared.classifier.preprocessing,
            settings.max_image_pixels,
            settings.decode_max_memory_mb << 20,
            settings.decode_timeout_s,
            settings.image_thumbnail_px if prepared.image_store is not None else 0,
            prepared.patches.patches.frame if prepared.patches is not None else 0,
        ),
        settings.decode_workers,
        on_replaced=metrics.decoder_replacements.inc if metrics else None,
    )
    await decoders.start()
    batcher.start()
    writer.start()
    runner = InferenceRunner(prepared.classifier, batcher, decoders)
    images = ImageService(
        prepared.image_store,
        prepared.database,
        on_not_kept=metrics.observe_image_not_kept if metrics else None,
        on_cleanup=metrics.observe_image_cleanup if metrics else None,
    )
    head_registry = HeadRegistry(
        prepared.database,
        prepared.classifier.identity.version,
        on_failure=metrics.observe_head_failure if metrics else None,
        patches=prepared.patches.patches if prepared.patches is not None else None,
    )
    try:
        await head_registry.refresh()
    except DatabaseUnavailable as exc:  # readiness says so; the watch loads them later
        log.warning("heads.refresh_failed", reason=exc.message)
    labels = LabelService(prepared.database, settings.max_label_sets)
    heads = HeadService(
        prepared.database,
        labels,
        head_registry,
        train_timeout_s=settings.head_train_timeout_s,
        compare_min_labels=settings.head_compare_min_labels,
        training_settings=_training_settings(settings),
        concurrency=settings.head_train_concurrency,
        max_memory_bytes=settings.head_train_max_memory_mb << 20,
    )
    predict = PredictService(
        runner,
        writer,
        images,
        tracing,
        timeout_s=settings.request_timeout_s,
        default_top_k=settings.default_top_k,
        max_batch_files=settings.max_batch_files,
        keep_embeddings=settings.keep_embeddings,
        heads=head_registry,
    )
    history = HistoryService(prepared.database)
    reviews = ReviewService(prepared.database, prepared.classifier.labels)
    drift = DriftService(
        prepared.database,
        DriftThresholds(
            settings.drift_class_js,
            settings.drift_confidence_ks,
            settings.drift_p_value,
            settings.drift_min_predictions,
        ),
        on_drift=metrics.observe_drift if metrics else None,
    )
    selection = prepared.classifier.selection
    readiness = ReadinessService(
        prepared.database,
        prepared.classifier.identity,
        settings.database_create_all,
        selection.summary() if selection else None,
    )
    watches = [
        task
        for task in (
            _start_drift_watch(drift, settings),
            _start_image_cleanup(images, settings),
            _start_history_maintenance(prepared.database, settings),
            asyncio.get_running_loop().create_task(
                head_registry.watch(settings.heads_refresh_s), name="heads-watch"
            ),
        )
        if task is not None
    ]
    try:
        yield Services(
            predict,
            history,
            reviews,
            drift,
            images,
            readiness,
            labels,
            heads,
            prepared.classifier,
            batcher,
            decoders,
        )
    finally:
        for task in watches:
            task.cancel()
        await batcher.close()
        await writer.close()
        await decoders.close()
        log.info(
            "shutdown.complete",
            batches=batcher.stats.batches,
            images=batcher.stats.images,
            largest_batch=batcher.stats.largest,
        )


def _training_settings(settings: Settings) -> dict[str, str]:
    """The settings `visinspect head train` and `detector train` must share with the server
    that starts them."""
    shared = {
        "DATABASE_URL": settings.database_url,
        "MODEL_ARCH": settings.model_arch.value,
        "MODEL_DIR": str(settings.model_dir),
        "HEADS_DIR": str(settings.heads_dir),
        "ANOMALY_FRAME_PX": str(settings.anomaly_frame_px),
        "MAX_IMAGE_PIXELS": str(settings.max_image_pixels),
        "MAX_UPLOAD_BYTES": str(settings.max_upload_bytes),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "WARNING",
    }
    if settings.model_weights is not None:
        shared["MODEL_WEIGHTS"] = str(settings.model_weights)
    if settings.image_store_dir is not None:  # a detector's good images are kept uploads
        shared["IMAGE_STORE_DIR"] = str(settings.image_store_dir)
    return shared


def _start_drift_watch(drift: DriftService, settings: Settings) -> asyncio.Task[None] | None:
    """Every DRIFT_INTERVAL_S, compare the windows for the gauges and the `drift.changed` line."""
    if settings.drift_interval_s <= 0:
        return None
    window, reference = (
        parse_duration(settings.drift_window),
        parse_duration(settings.drift_reference),
    )

    async def watch() -> None:
        while True:
            try:
                await drift.watch(window, reference)
            except DatabaseUnavailable as exc:  # readiness reports it; the watch tries again
                log.warning("drift.skipped", reason=exc.message)
            await asyncio.sleep(settings.drift_interval_s)

    return asyncio.get_running_loop().create_task(watch(), name="drift-watch")


def _start_image_cleanup(images: ImageService, settings: Settings) -> asyncio.Task[None] | None:
    """The kept images' cleanup: at start (it also measures the store), every
    IMAGE_CLEANUP_INTERVAL_S, and when an upload finds the store full."""
    if not images.enabled:
        return None
    return asyncio.get_running_loop().create_task(
        images.watch(settings.image_cleanup_interval_s), name="image-cleanup"
    )


def _start_history_maintenance(database: Database, settings: Settings) -> asyncio.Task[None]:
    """The coming days' partitions and RETENTION_DAYS: at start, then every
    HISTORY_MAINTENANCE_INTERVAL_S (db/partitions.py; one process at a time)."""

    async def maintain() -> None:
        while True:
            try:
                done = await anyio.to_thread.run_sync(
                    partitions.maintain, database.engine, settings.retention_days
                )
                days = retention.retention_days(
                    settings.embedding_retention_days, settings.retention_days
                )
                gone = await anyio.to_thread.run_sync(
                    retention.apply_retention, database.engine, days
                )
                if gone:
                    log.info("db.embeddings_removed", rows=gone, retention_days=days)
                if done.created or done.dropped or done.deleted_rows:
                    log.info(
                        "db.maintained",
                        created=done.created,
                        dropped=done.dropped,
                        deleted_rows=done.deleted_rows,
                        drop_ms=[round(s * 1000, 1) for s in done.drop_seconds],
                    )
            except Exception as exc:  # an outage, a lock: say so, try again next round
                log.warning("db.maintenance_failed", reason=str(exc).splitlines()[0])
            if settings.history_maintenance_interval_s <= 0:
                return
            await asyncio.sleep(settings.history_maintenance_interval_s)

    return asyncio.get_running_loop().create_task(maintain(), name="history-maintenance")
