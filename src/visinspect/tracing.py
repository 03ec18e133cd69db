"""OpenTelemetry traces: one server span per HTTP request (FastAPI's own, with its operations)
and, under it, one `classify` span per image with its phases as children: `decode`, `queue
wait`, `inference` and `db write`. Every span of ours carries the request id; a caller's
`traceparent` header makes the request part of its trace.

Clients cannot make the service trace more: whether a request is recorded is the service's own
random draw at OTEL_TRACES_SAMPLER_ARG (`OwnDraw`), not a caller's sampled flag, nor its trace id
(which `TraceIdRatioBased` would compare with a bound: a caller could pick ids under it). Every
attribute is cut at SPAN_ATTRIBUTE_CHARS and a span holds at most SPAN_ATTRIBUTES of them, so a
user agent or URL of 16 KiB is not exported whole.

Off unless OTEL_EXPORTER_OTLP_ENDPOINT is set, and then free: the SDK and the exporter are not
imported, FastAPI's telemetry is switched off, and a request pays one `is None` test. When on,
spans are exported over OTLP/HTTP in batches from a background thread. The phases of a classification are recorded after the fact from the times
the pipeline measured anyway (explicit start and end times), so no span object crosses into the
decoder processes or the model threads, and the hot path does no tracing work of its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from visinspect import __version__

SPAN_ATTRIBUTE_CHARS = 256
SPAN_ATTRIBUTES = 64

if TYPE_CHECKING:
    from fastapi.telemetry import TelemetryConfig
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from visinspect.config import Settings


@dataclass(slots=True)
class Timeline:
    """When each phase of one classification began and ended, in `time.time_ns()` nanoseconds
    (OpenTelemetry's clock). Filled in as the phases happen; a phase never reached stays 0."""

    started: int = 0
    decode_started: int = 0
    decoded: int = 0
    model_started: int = 0
    model_ended: int = 0
    batch_size: int = 0
    write_started: int = 0
    written: int = 0


class Tracing:
    """The tracer of one server process, and how its spans are named and nested."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("visinspect", __version__)

    @classmethod
    def from_settings(
        cls, settings: Settings, exporter: SpanExporter | None = None
    ) -> Tracing | None:
        """None (tracing off) unless OTEL_EXPORTER_OTLP_ENDPOINT is set or an exporter is given
        (the tests pass the SDK's in-memory one, which then receives each span as it ends)."""
        if exporter is None and not settings.otel_exporter_otlp_endpoint:
            return None
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import SpanLimits, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased

        own = _own_draw(settings.otel_traces_sampler_arg)
        provider = TracerProvider(
            resource=Resource.create(
                {"service.name": settings.otel_service_name, "service.version": __version__}
            ),
            # A remote parent's flag is not followed; a local one (our own spans) is.
            sampler=ParentBased(own, remote_parent_sampled=own, remote_parent_not_sampled=own),
            span_limits=SpanLimits(
                max_attributes=SPAN_ATTRIBUTES, max_attribute_length=SPAN_ATTRIBUTE_CHARS
            ),
        )
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            assert settings.otel_exporter_otlp_endpoint is not None
            provider.add_span_processor(
                BatchSpanProcessor(
                    OTLPSpanExporter(endpoint=traces_endpoint(settings.otel_exporter_otlp_endpoint))
                )
            )
        return cls(provider)

    def fastapi_telemetry(self) -> TelemetryConfig:
        """FastAPI's own request tracing on this provider: the server span of each request
        (a caller's traceparent followed, named after its route, status and errors recorded) and
        its operations (dependencies with the upload's parsing, endpoint, serialization)."""
        return {
            "tracer_provider": self.provider,
            "tracing": True,
            "operation_spans": True,
            "metrics": False,  # /metrics has them (Prometheus)
            "logs": False,  # the JSON log lines have them
        }

    @staticmethod
    def mark_request(request_id: str) -> str | None:
        """Put the request id on the current request's span; its trace id, for the log lines."""
        from opentelemetry import trace

        span = trace.get_current_span()
        span.set_attribute("visinspect.request_id", request_id)
        context = span.get_span_context()
        return f"{context.trace_id:032x}" if context.is_valid else None

    def record_classification(
        self,
        timeline: Timeline,
        request_id: str,
        outcome: dict[str, Any],
        error: str | None = None,
    ) -> None:
        """The `classify` span of one image and a child per phase it reached, under the request's
        span. `outcome`: attributes of the result (record id, class, confidence); `error`: the
        domain error's code when the image was refused."""
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        end = timeline.written or time.time_ns()
        parent = self.tracer.start_span(
            "classify",
            start_time=timeline.started,
            attributes={"visinspect.request_id": request_id, **outcome},
        )
        context = trace.set_span_in_context(parent)
        phases: list[tuple[str, int, int, dict[str, Any]]] = [
            ("decode", timeline.decode_started, timeline.decoded, {}),
            ("queue wait", timeline.decoded, timeline.model_started, {}),
            ("inference", timeline.model_started, timeline.model_ended,
             {"visinspect.batch_size": timeline.batch_size}),
            ("db write", timeline.write_started, timeline.written, {"db.operation.name": "INSERT"}),
        ]  # fmt: skip
        for name, start, stop, attributes in phases:
            if start and stop:
                span = self.tracer.start_span(
                    name,
                    context=context,
                    start_time=start,
                    attributes={"visinspect.request_id": request_id, **attributes},
                )
                span.end(end_time=stop)
        if error is not None:
            parent.set_status(Status(StatusCode.ERROR, error))
            parent.set_attribute("error.type", error)
        parent.end(end_time=end)

    def shutdown(self) -> None:
        """Export what is buffered (at most the exporter's timeout), then stop."""
        self.provider.shutdown()


def traces_endpoint(base: str) -> str:
    """OTEL_EXPORTER_OTLP_ENDPOINT is the collector's base URL: traces go to /v1/traces (the
    OTLP/HTTP specification); a URL that already names that path is used as it is."""
    base = base.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


# FastAPI's tracing, metrics and logs, all off: with traces off a request pays nothing for them,
# even where another library has configured a global OpenTelemetry provider.
TELEMETRY_OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def _own_draw(ratio: float) -> Any:
    """A sampler that records `ratio` of the spans it is asked about, by a random draw of its
    own (defined here so that the SDK is imported only when tracing is on)."""
    import random

    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
    from opentelemetry.trace import get_current_span

    class OwnDraw(Sampler):
        def should_sample(
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: Any = None,
            attributes: Any = None,
            links: Any = None,
            trace_state: Any = None,
        ) -> SamplingResult:
            sampled = ratio >= 1.0 or random.random() < ratio  # noqa: S311 (not a secret)
            state = get_current_span(parent_context).get_span_context().trace_state
            decision = Decision.RECORD_AND_SAMPLE if sampled else Decision.DROP
            return SamplingResult(decision, attributes if sampled else None, state)

        def get_description(self) -> str:
            return f"OwnDraw{{{ratio}}}"

    return OwnDraw()
