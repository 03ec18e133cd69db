"""Prometheus metrics (prometheus-client), one registry per app, served at /metrics.

Request metrics are recorded by `api/middleware.py`, labelled by route template. With several worker processes each process
has its own registry; scrape them individually or run one worker per container.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
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
            "Images waiting for the model.",
            registry=self.registry,
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
        self.model = Info("visinspect_model", "The model being served.", registry=self.registry)
        self.decoder_replacements = Gauge(
            "visinspect_decoder_replacements",
            "Decoder processes replaced since start (killed after DECODE_TIMEOUT_S, crashed, "
            "or recycled after a large decode); climbing fast means hostile or broken uploads.",
            registry=self.registry,
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def watch_decoders(self, replaced: Callable[[], int]) -> None:
        self.decoder_replacements.set_function(lambda: float(replaced()))
