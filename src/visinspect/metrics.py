"""Prometheus metrics (prometheus-client), one registry per app, served at /metrics.

Request metrics are recorded by `api/middleware.py`, labelled by route template. When several
server processes share a port (`visinspect serve` with WORKERS > 1) each writes its values to
PROMETHEUS_MULTIPROC_DIR and a scrape, answered by any of them, adds up every process's
(prometheus-client's multiprocess mode): one scrape counts every request, whichever process
served it. Gauges say how they combine: the queue depth is summed over live processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from visinspect.services.drift import Drift
    from visinspect.storage.image_store import CleanupReport

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "visinspect_http_requests_total",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "visinspect_http_request_duration_seconds",
            "HTTP request latency by route template and method.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "visinspect_inference_seconds",
            "Time of one forward pass (a whole micro-batch).",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "visinspect_inference_batch_size",
            "Images per forward pass.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "visinspect_inference_queue_depth",
            "Images waiting for the model (summed over the server processes).",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter(
            "visinspect_requests_rejected_total",
            "Requests answered with a domain error, by error code.",
            ["code"],
            registry=self.registry,
        )
        self.database_errors = Counter(
            "visinspect_database_errors_total",
            "Operations that failed because the database was unavailable.",
            registry=self.registry,
        )
        # An info metric as a gauge of 1: prometheus-client's Info has no multiprocess mode.
        self.model = Gauge(
            "visinspect_model_info",
            "The model being served.",
            ["model_name", "model_version", "backend", "precision"],
            registry=self.registry,
            multiprocess_mode="max",
        )
        self.decoder_replacements = Counter(
            "visinspect_decoder_replacements",
            "Decoder processes replaced (killed after DECODE_TIMEOUT_S, crashed, or recycled "
            "after a large decode); climbing fast means hostile or broken uploads.",
            registry=self.registry,
        )

        # The drift watch (services/drift.py), every DRIFT_INTERVAL_S in each process.
        self.drift_class_js = Gauge(
            "visinspect_drift_class_js_distance",
            "Jensen-Shannon distance of the top-1 classes: the recent window against the reference.",
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        self.drift_confidence_ks = Gauge(
            "visinspect_drift_confidence_ks",
            "Kolmogorov-Smirnov statistic of the confidences: the recent window against the "
            "reference.",
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        self.drift_detected = Gauge(
            "visinspect_drift_detected",
            "1 when the stream of images drifted, 0 when not, -1 when a window holds too few "
            "predictions to say.",
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )

        # Kept images (services/images.py).
        self.images_not_kept = Counter(
            "visinspect_images_not_kept",
            "Classified uploads whose image the store did not keep, by reason (store_full, "
            "disk_full, write_failed); their predictions were recorded.",
            ["reason"],
            registry=self.registry,
        )
        self.slow_readers_cut = Counter(
            "visinspect_http_slow_readers_cut",
            "Connections aborted because the client read nothing of a response for "
            "HTTP_WRITE_TIMEOUT_S; their requests' slots were freed.",
            registry=self.registry,
        )
        self.head_failures = Counter(
            "visinspect_head_failures",
            "Heads skipped, by reason (broken_artifact, base_model_differs, apply_failed): the "
            "predictions were answered and recorded without them.",
            ["reason"],
            registry=self.registry,
        )
        self.images_removed = Counter(
            "visinspect_images_removed",
            "Kept images removed by the cleanup: expired (IMAGE_RETENTION_DAYS) or evicted "
            "(IMAGE_STORE_MAX_BYTES).",
            ["reason"],
            registry=self.registry,
        )
        self.image_store_bytes = Gauge(
            "visinspect_image_store_bytes",
            "Bytes in the image store, as its last cleanup measured them.",
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        self.image_store_images = Gauge(
            "visinspect_image_store_images",
            "Distinct images in the store, as its last cleanup counted them.",
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )

    def observe_image_not_kept(self, reason: str) -> None:
        self.images_not_kept.labels(reason).inc()

    def observe_head_failure(self, reason: str) -> None:
        self.head_failures.labels(reason).inc()

    def observe_image_cleanup(self, report: CleanupReport) -> None:
        self.images_removed.labels("expired").inc(report.expired)
        self.images_removed.labels("evicted").inc(report.evicted)
        self.image_store_bytes.set(report.bytes)
        self.image_store_images.set(report.images)

    def observe_drift(self, drift: Drift) -> None:
        self.drift_detected.set(-1 if drift.drifted is None else int(drift.drifted))
        if drift.class_js_distance is not None:
            self.drift_class_js.set(drift.class_js_distance)
        if drift.confidence_ks is not None:
            self.drift_confidence_ks.set(drift.confidence_ks)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)

    def set_model(self, name: str, version: str, backend: str, precision: str) -> None:
        self.model.labels(name, version, backend, precision).set(1)

    def render(self) -> bytes:
        """The text exposition: this process's registry, or every process's values."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        return generate_latest(registry)
