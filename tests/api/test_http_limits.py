"""The HTTP limits, in one place. On a real `visinspect serve`, spoken to over raw sockets (marked
slow): header size and count (431), headers and bodies that trickle in (408), keys checked before
the body is read, forwarded headers ignored unless a proxy is configured; every refusal is a JSON
error body with the security headers, and the server keeps serving. Through the real app: one
`file` field per /predict, no redirect built from Host, a cap on requests in progress."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from tests.support import (
    environment,
    gated_model,
    json_lines,
    make_settings,
    rows_with_request_id,
    running_app,
    services_of,
    serving,
    start_and_fail,
    synthetic_record,
    wait_until,
)
from visinspect.db import repository
from visinspect.db.schema import upgrade_to_head
from visinspect.main import FORM_MAX_FIELD_BYTES, FORM_MAX_FIELDS

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
KEY = "limits-test-key-0123"


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("limits")
    with serving(
        f"sqlite:///{folder / 'limits.db'}",
        folder / "server.log",
        HTTP_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        HTTP_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
        HTTP_MAX_HEADER_BYTES="8192",
        HTTP_MAX_HEADERS="50",
        API_KEYS=KEY,
    ) as (_process, base):
        yield base, folder / "server.log"


def _connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=15)


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], dict]:  # type: ignore[type-arg]
    """Read until the server closes; parse status, headers and the JSON body."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, json.loads(body)


def _trickle(sock: socket.socket, byte: bytes, interval_s: float, for_s: float) -> None:
    """Send one byte every `interval_s` for `for_s` seconds, or until the server answers. Stop
    short of the server's deadline: a byte that arrives after it, unread when the server closes,
    makes the kernel reset the connection, which can destroy the answer before it is read."""
    stop = time.monotonic() + for_s
    while time.monotonic() < stop:
        if select.select([sock], [], [], interval_s)[0]:
            return  # the answer is there to read
        try:
            sock.sendall(byte)
        except (BrokenPipeError, ConnectionResetError):
            return


def _refused(base: str, payload: bytes) -> tuple[int, dict[str, str], dict]:  # type: ignore[type-arg]
    with _connect(base) as sock:
        sock.sendall(payload)
        return _answer(sock)


def _still_serving(base: str) -> None:
    assert httpx.get(f"{base}/health/live", timeout=5).status_code == 200


@pytest.mark.slow
def test_oversized_headers_are_431(limited: tuple[str, Path]) -> None:
    base, _ = limited
    big = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 50_000 + b"\r\n\r\n"
    status, headers, body = _refused(base, big)
    assert (status, body["error"]["code"]) == (431, "headers_too_large")
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-type"] == "application/json"
    _still_serving(base)


@pytest.mark.slow
def test_a_header_that_never_ends_is_cut_off_at_the_limit(limited: tuple[str, Path]) -> None:
    """50 MB of one header value, sent in pieces: refused once the limit is crossed, long before
    the server would have buffered it all."""
    base, _ = limited
    with _connect(base) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        sent = 0
        try:
            while sent < 50_000_000:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sent < 5_000_000, sent
    _still_serving(base)


@pytest.mark.slow
def test_too_many_headers_are_431(limited: tuple[str, Path]) -> None:
    base, _ = limited
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    status, _, body = _refused(base, b"GET /health/live HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    assert (status, body["error"]["code"]) == (431, "too_many_headers")
    _still_serving(base)


@pytest.mark.slow
def test_headers_trickled_in_are_408_after_the_header_timeout(limited: tuple[str, Path]) -> None:
    base, _ = limited
    started = time.monotonic()
    with _connect(base) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        _trickle(sock, b"X", interval_s=0.1, for_s=HEADER_TIMEOUT_S - 0.3)  # slowloris
        status, _, body = _answer(sock)
    assert (status, body["error"]["code"]) == (408, "request_timeout")
    assert HEADER_TIMEOUT_S - 0.1 < time.monotonic() - started < HEADER_TIMEOUT_S + 2
    _still_serving(base)


@pytest.mark.slow
def test_a_connection_that_sends_nothing_is_closed(limited: tuple[str, Path]) -> None:
    base, _ = limited
    started = time.monotonic()
    with _connect(base) as sock:
        status, _, _ = _answer(sock)
    assert status == 408
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 2


@pytest.mark.slow
def test_a_body_trickled_in_is_408_after_the_body_timeout(limited: tuple[str, Path]) -> None:
    base, _ = limited
    started = time.monotonic()
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
    )
    with _connect(base) as sock:
        sock.sendall(head + b"--b\r\n")
        _trickle(sock, b"x", interval_s=0.1, for_s=BODY_TIMEOUT_S - 0.3)
        status, headers, body = _answer(sock)
    assert (status, body["error"]["code"]) == (408, "request_timeout")
    assert "HTTP_BODY_TIMEOUT_S" in body["error"]["message"]
    assert headers["x-request-id"]
    assert BODY_TIMEOUT_S - 0.1 < time.monotonic() - started < BODY_TIMEOUT_S + 3
    _still_serving(base)


@pytest.mark.slow
def test_the_key_is_checked_before_the_body_is_read(limited: tuple[str, Path]) -> None:
    """10 MB announced, not one byte of it sent: the 401 comes at once."""
    base, _ = limited
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000\r\n\r\n"
    )
    started = time.monotonic()
    status, headers, body = _refused(base, head)
    assert (status, body["error"]["code"]) == (401, "missing_api_key")
    assert headers["www-authenticate"] == "Bearer"
    assert time.monotonic() - started < 1.5
    wrong = head.replace(b"Host: x\r\n", b"Host: x\r\nX-API-Key: nope\r\n")
    assert _refused(base, wrong)[0] == 403


@pytest.mark.slow
def test_a_batch_with_too_many_files_is_refused_while_it_is_parsed(
    limited: tuple[str, Path],
) -> None:
    """17 parts of a body announced as 20 MB, then nothing: the 422 comes from the parser at
    the 17th part, before the rest arrives (it came after the whole body, or the body timeout)."""
    base, _ = limited
    part = b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n\r\n'
    parts = (part + b"x" * 1000 + b"\r\n") * 17
    head = (
        b"POST /predict/batch HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode() + b"\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 20000000\r\n\r\n"
    )
    started = time.monotonic()
    status, _, body = _refused(base, head + parts)
    assert (status, body["error"]["code"]) == (422, "too_many_files")
    assert "MAX_BATCH_FILES" in body["error"]["message"]
    assert time.monotonic() - started < BODY_TIMEOUT_S
    _still_serving(base)


def test_form_fields_are_few_and_small(client: TestClient, photos: Path) -> None:
    coffee = {"files": ("c.png", (photos / "coffee.png").read_bytes())}
    many = {f"f{n}": "x" for n in range(FORM_MAX_FIELDS + 1)}
    response = client.post("/predict/batch", files=coffee, data=many)
    assert (response.status_code, response.json()["error"]["code"]) == (422, "too_many_fields")
    large = {"note": "x" * (FORM_MAX_FIELD_BYTES + 1)}
    response = client.post("/predict/batch", files=coffee, data=large)
    assert (response.status_code, response.json()["error"]["code"]) == (413, "form_field_too_large")
    fine = client.post("/predict/batch", files=coffee, data={"note": "x"})
    assert fine.status_code == 200


@pytest.mark.slow
def test_forwarded_for_is_ignored_without_a_configured_proxy(limited: tuple[str, Path]) -> None:
    base, log = limited
    response = httpx.get(
        f"{base}/health/live",
        headers={"X-Forwarded-For": "203.0.113.9", "X-Request-ID": "forwarded-test"},
    )
    assert response.status_code == 200

    def logged() -> list[dict[str, Any]]:
        return [e for e in json_lines(log.read_text()) if e.get("request_id") == "forwarded-test"]

    wait_until(lambda: bool(logged()), 5, "the request's log line")
    (line,) = [e for e in logged() if e["event"] == "http.request"]
    assert line["client"] == "127.0.0.1"


@pytest.mark.slow
def test_a_client_that_never_reads_its_response_is_cut(tmp_path: Path) -> None:
    """Two clients ask for a 200-row page of 1,000-class rows (about 14 MB: more than the
    sockets' buffers) and read nothing, with MAX_CONCURRENT_REQUESTS=2. A page is handed to the
    connection whole, so their slots come back once it is built (a streamed response, such as a
    kept image, waits for the client between chunks and holds its slot: the same timeout cuts
    it); but each connection held its 14 MB for as long as the client kept it open. Now both
    are cut after the write timeout, counted, and got only what the buffers took."""
    url = f"sqlite:///{tmp_path / 'slow.db'}"
    engine = create_engine(url)
    upgrade_to_head(engine)
    every_class = [
        {"class_id": i, "class_name": f"class {i}", "confidence": 0.001} for i in range(1000)
    ]
    with Session(engine) as session:
        records = [synthetic_record(f"slow-{n}") for n in range(200)]
        for record in records:
            record.predictions = every_class
        repository.add_predictions(session, records)
        session.commit()
    engine.dispose()
    with serving(
        url, tmp_path / "server.log", MAX_CONCURRENT_REQUESTS="2", HTTP_WRITE_TIMEOUT_S="2"
    ) as (_process, base):
        readers = [_never_reading(base, "/predictions?limit=200") for _ in range(2)]
        try:
            wait_until(
                lambda: httpx.get(f"{base}/predictions?limit=1", timeout=10).status_code == 200,
                20,
                "a request served while the slow readers' pages wait in their connections",
            )
            wait_until(
                lambda: (
                    "visinspect_http_slow_readers_cut_total 2.0"
                    in httpx.get(f"{base}/metrics", timeout=10).text
                ),
                20,
                "both slow readers cut",
            )
            for sock in readers:  # each was cut short: far less than the page arrives
                assert _drain(sock) < 8_000_000
        finally:
            for sock in readers:
                sock.close()
        log = (tmp_path / "server.log").read_text()
        assert len([e for e in json_lines(log) if e["event"] == "http.slow_reader_cut"]) == 2


def _never_reading(base: str, path: str) -> socket.socket:
    """A request whose answer is not read: a 4 KiB receive buffer, set before connecting."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


def _drain(sock: socket.socket) -> int:
    """Read what is left until the server's close (or reset); how many bytes came."""
    sock.settimeout(10)
    received = 0
    try:
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    except ConnectionResetError:
        pass
    return received


@pytest.mark.slow
def test_no_keys_beyond_loopback_is_refused_unless_allowed(tmp_path: Path) -> None:
    """No API_KEYS and 0.0.0.0: no start (exit 1, one `startup.failed` that says what to do);
    with ALLOW_ANONYMOUS=true, a start with one loud `security.open` line."""
    failed = start_and_fail(
        environment(DATABASE_URL=f"sqlite:///{tmp_path / 'open.db'}", HOST="0.0.0.0"), tmp_path
    )
    assert failed["part"] == "security"
    assert "0.0.0.0" in failed["reason"]
    assert "ALLOW_ANONYMOUS=true" in failed["action"]

    log = tmp_path / "open.log"
    database = f"sqlite:///{tmp_path / 'open.db'}"
    with serving(database, log, HOST="0.0.0.0", ALLOW_ANONYMOUS="true") as (process, _):
        process.terminate()
        process.wait(timeout=30)
    warnings = [e for e in json_lines(log.read_text()) if e["event"] == "security.open"]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"
    assert "API_KEYS" in warnings[0]["message"]


def test_one_file_field_per_predict(client: TestClient, photos: Path) -> None:
    coffee = (photos / "coffee.png").read_bytes()
    request_id = uuid.uuid4().hex
    response = client.post(
        "/predict",
        files=[("file", ("a.png", coffee)), ("file", ("b.png", coffee))],
        headers={"X-Request-ID": request_id},
    )
    assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_request")
    assert "/predict/batch" in response.json()["error"]["message"]
    assert rows_with_request_id(client, request_id) == []


def test_no_redirect_is_built_from_the_host_header(client: TestClient) -> None:
    response = client.get("/predictions/", headers={"Host": "evil.example"}, follow_redirects=False)
    assert response.status_code == 404
    assert "location" not in response.headers


def test_requests_beyond_the_concurrency_limit_are_503_at_once(
    tmp_path: Path, photos: Path
) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'c.db'}", max_concurrent_requests=1)
    coffee = (photos / "coffee.png").read_bytes()
    with running_app(settings) as client:
        first: list[int] = []
        worker = threading.Thread(
            target=lambda: first.append(
                client.post("/predict", files={"file": ("c.png", coffee)}).status_code
            )
        )
        with gated_model(services_of(client).classifier) as gate:
            worker.start()
            wait_until(gate.entered.is_set, what="the first request to reach the model")
            refused = client.post("/predict", files={"file": ("c.png", coffee)})
            health = client.get("/health")  # probes are never refused
            files = [client.get(p) for p in ("/static/app.js", "/docs-assets/swagger-ui-bundle.js")]
        worker.join(30)
    assert (refused.status_code, refused.json()["error"]["code"]) == (503, "overloaded")
    assert "MAX_CONCURRENT_REQUESTS" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"]
    assert health.status_code == 200
    assert [f.status_code for f in files] == [200, 200]  # nor the page's and the docs' files
    assert first == [200]
