"""OpenTelemetry traces: with the SDK's in-memory exporter, a request's server span holds one
`classify` span per image and, under it, decode, queue wait, inference and db write, each with
the request id; a caller's traceparent is followed. A real `visinspect serve` exports the same
over OTLP/HTTP to a real receiver, and with OTEL_EXPORTER_OTLP_ENDPOINT unset nothing of
OpenTelemetry is even imported."""

from __future__ import annotations

import http.server
import itertools
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.support import fresh_postgres_database, json_lines, make_settings, serving
from visinspect.main import create_app
from visinspect.tracing import SPAN_ATTRIBUTE_CHARS, Tracing, traces_endpoint

PHASES = ["decode", "queue wait", "inference", "db write"]
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Any]]:
    exporter = InMemorySpanExporter()
    settings = make_settings(f"sqlite:///{tmp_path_factory.mktemp('traced')}/t.db")
    tracing = Tracing.from_settings(settings, exporter)
    with TestClient(create_app(settings, tracing=tracing)) as client:
        yield client, exporter


def spans_of(exporter: Any, request_id: str) -> list[ReadableSpan]:
    """Every span of the trace of the request with this id."""
    spans: list[ReadableSpan] = exporter.get_finished_spans()
    (server,) = [
        s
        for s in spans
        if s.kind is SpanKind.SERVER
        and (s.attributes or {}).get("visinspect.request_id") == request_id
    ]
    return [s for s in spans if s.context.trace_id == server.context.trace_id]


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def named_under(spans: list[ReadableSpan], ancestor: ReadableSpan, name: str) -> list[ReadableSpan]:
    """The spans of that name anywhere below `ancestor`."""
    found, frontier = [], [ancestor]
    while frontier:
        below = children(spans, frontier.pop())
        found += [s for s in below if s.name == name]
        frontier += below
    return found


def test_a_classification_is_a_tree_of_its_phases_under_the_callers_trace(
    traced: tuple[TestClient, Any], photos: Path
) -> None:
    client, exporter = traced
    response = client.post(
        "/predict",
        files={"file": ("coffee.png", (photos / "coffee.png").read_bytes())},
        headers={
            "X-Request-ID": "traced-1",
            "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
        },
    )
    assert response.status_code == 200
    spans = spans_of(exporter, "traced-1")
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert server.name == "POST /predict"
    assert f"{server.context.trace_id:032x}" == CALLER_TRACE  # the caller's trace
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == CALLER_SPAN
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/predict"
    assert server.attributes["http.response.status_code"] == 200
    assert {"fastapi.dependencies", "fastapi.endpoint"} <= {s.name for s in children(spans, server)}
    (classify,) = named_under(spans, server, "classify")
    assert classify.attributes is not None
    assert classify.attributes["visinspect.request_id"] == "traced-1"
    assert classify.attributes is not None
    assert classify.attributes["visinspect.prediction_id"] == response.json()["id"]
    assert classify.attributes["visinspect.class_name"] == "espresso"
    phases = sorted(children(spans, classify), key=lambda s: s.start_time or 0)
    assert [s.name for s in phases] == PHASES
    assert phases[2].attributes is not None
    assert phases[2].attributes["visinspect.batch_size"] == 1
    # One after the other, inside the classification, inside the request.
    times = [(s.start_time or 0, s.end_time or 0) for s in [server, classify, *phases]]
    assert all(start <= end for start, end in times)
    assert times[0][0] <= times[1][0]
    assert times[1][1] <= times[0][1]
    for (_, end), (start, _) in itertools.pairwise(times[2:]):
        assert end <= start
    # The classification's phases account for the time the record says it took.
    decode, _, inference, _ = phases
    decoded_ms = ((decode.end_time or 0) - (decode.start_time or 0)) / 1e6
    assert decoded_ms >= response.json()["decode_ms"] * 0.9
    assert (inference.end_time or 0) <= (classify.end_time or 0)


def test_each_file_of_a_batch_has_its_classify_span_and_a_refusal_is_an_error(
    traced: tuple[TestClient, Any], photos: Path
) -> None:
    client, exporter = traced
    files = [
        ("files", ("camera.png", (photos / "camera.png").read_bytes())),
        ("files", ("notes.txt", b"this is not an image at all")),
        ("files", ("chelsea.png", (photos / "chelsea.png").read_bytes())),
    ]
    response = client.post("/predict/batch", files=files, headers={"X-Request-ID": "traced-2"})
    assert response.status_code == 200
    spans = spans_of(exporter, "traced-2")
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert server.name == "POST /predict/batch"
    classifies = named_under(spans, server, "classify")
    assert len(classifies) == 3
    refused = [s for s in classifies if s.status.status_code is StatusCode.ERROR]
    assert len(refused) == 1
    assert refused[0].attributes is not None
    assert refused[0].attributes["error.type"] == response.json()["items"][1]["error"]["code"]
    assert children(spans, refused[0]) == []  # it never reached a phase that finished
    for done in (s for s in classifies if s not in refused):
        assert sorted(c.name for c in children(spans, done)) == sorted(PHASES)


def test_a_server_error_status_marks_the_request_span(
    traced: tuple[TestClient, Any],
) -> None:
    client, exporter = traced
    assert client.get("/predictions/12345", headers={"X-Request-ID": "traced-3"}).status_code == 404
    (server,) = [s for s in spans_of(exporter, "traced-3") if s.kind is SpanKind.SERVER]
    assert server.name == "GET /predictions/{prediction_id}"  # the template, not the raw path
    assert server.status.status_code is StatusCode.UNSET  # a 4xx is the client's, not an error


def test_a_caller_cannot_make_the_service_trace(tmp_path: Path, photos: Path) -> None:
    """OTEL_TRACES_SAMPLER_ARG=0: a caller's sampled traceparent, with a trace id that
    TraceIdRatioBased would sample at any ratio (the lowest), records nothing."""
    exporter = InMemorySpanExporter()
    settings = make_settings(f"sqlite:///{tmp_path / 't.db'}", otel_traces_sampler_arg=0.0)
    with TestClient(create_app(settings, tracing=Tracing.from_settings(settings, exporter))) as c:
        response = c.post(
            "/predict",
            files={"file": ("coffee.png", (photos / "coffee.png").read_bytes())},
            headers={"traceparent": f"00-{'0' * 31}1-{CALLER_SPAN}-01"},
        )
    assert response.status_code == 200
    assert exporter.get_finished_spans() == ()


def test_attributes_are_cut_short(traced: tuple[TestClient, Any]) -> None:
    client, exporter = traced
    query = "a" * 10_000  # within the header limits; not exported whole
    assert client.get(f"/health/live?{query}").status_code == 200
    spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    attributes = spans[-1].attributes or {}
    assert str(attributes["url.query"]).startswith("aaaa")
    assert max(len(str(v)) for v in attributes.values()) <= SPAN_ATTRIBUTE_CHARS


def test_the_otlp_endpoint_is_the_collectors_base_url() -> None:
    assert traces_endpoint("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_endpoint("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_endpoint("http://c:4318/v1/traces") == "http://c:4318/v1/traces"


def test_without_an_endpoint_neither_the_sdk_nor_the_exporter_is_imported(photos: Path) -> None:
    script = f"""
import sys
from fastapi.testclient import TestClient
from tests.support import make_settings
from visinspect.main import create_app
with TestClient(create_app(make_settings("sqlite://"))) as client:
    response = client.post("/predict", files={{"file": open({str(photos / "coffee.png")!r}, "rb")}})
    assert response.status_code == 200, response.text
loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter")))
assert loaded == [], loaded  # FastAPI imports the API itself
print("no SDK")
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no SDK" in done.stdout


class _Collector(http.server.BaseHTTPRequestHandler):
    """The receiving end of OTLP/HTTP: protobuf ExportTraceServiceRequest bodies on /v1/traces."""

    received: list[tuple[str, str, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def test_a_real_server_exports_its_spans_over_otlp(tmp_path: Path, photos: Path) -> None:
    handler = type("Collector", (_Collector,), {"received": []})
    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    try:
        with (
            fresh_postgres_database() as url,
            serving(
                url,
                tmp_path / "server.log",
                OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
                OTEL_SERVICE_NAME="inspection-line-3",
                WORKERS="1",
            ) as (process, base),
        ):
            answer = httpx.post(
                base + "/predict",
                files={"file": ("rocket.jpg", (photos / "rocket.jpg").read_bytes())},
                headers={"X-Request-ID": "exported-1"},
                timeout=30,
            )
            assert answer.status_code == 200
            process.terminate()  # the shutdown exports what is buffered
            process.wait(timeout=60)
    finally:
        collector.shutdown()
        collector.server_close()
    assert handler.received, "nothing reached the collector"
    names: dict[str, str] = {}
    service_names = set()
    for path, content_type, body in handler.received:
        assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            service_names.add(attributes["service.name"])
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    ids = {a.key: a.value.string_value for a in span.attributes}
                    if ids.get("visinspect.request_id") == "exported-1":
                        names[span.name] = span.trace_id.hex()
    assert service_names == {"inspection-line-3"}
    assert {"POST /predict", "classify", *PHASES} <= set(names)
    (trace_id,) = set(names.values())
    lines = json_lines((tmp_path / "server.log").read_text())
    (logged,) = [line for line in lines if line.get("request_id") == "exported-1"
                 and line.get("event") == "http.request"]  # fmt: skip
    assert logged["trace_id"] == trace_id  # the log line points at the trace
