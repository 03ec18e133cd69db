"""Request-level limits through the real app (PostgreSQL and SQLite): decode budgets answer
413/422 and store nothing, one `file` field per /predict, no redirect built from Host, a cap on
requests in progress, and decoder warnings in the JSON log."""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.decode_bombs import canvas_gif, scan_bomb
from tests.support import (
    gated_model,
    make_settings,
    rows_with_request_id,
    running_app,
    services_of,
    wait_until,
)


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda: canvas_gif(7000, 7000), 413, "image_too_large_to_decode"),
        (lambda: scan_bomb((8000, 8000), 3000), 422, "image_too_slow_to_decode"),
        (lambda: b"%!PS-Adobe-3.0\n" + b"%% comment\n" * 100_000, 415, "not_an_image"),
    ],
    ids=["canvas", "scans", "postscript"],
)
def test_decode_budgets_answer_and_store_nothing(
    client: TestClient, make: object, status: int, code: str
) -> None:
    request_id = uuid.uuid4().hex
    response = client.post(
        "/predict",
        files={"file": ("bomb", make())},  # type: ignore[operator]
        headers={"X-Request-ID": request_id},
    )
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert rows_with_request_id(client, request_id) == []


def test_decoder_replacements_are_a_metric(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'm.db'}", decode_timeout_s=0.5)
    with running_app(settings) as client:
        bomb = scan_bomb((8000, 8000), 3000)
        assert client.post("/predict", files={"file": ("b.jpg", bomb)}).status_code == 422
        scrape = client.get("/metrics").text
    assert "visinspect_decoder_replacements_total 1.0" in scrape


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
        worker.join(30)
    assert (refused.status_code, refused.json()["error"]["code"]) == (503, "overloaded")
    assert "MAX_CONCURRENT_REQUESTS" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"]
    assert health.status_code == 200
    assert first == [200]


def test_decoder_warnings_reach_the_json_log(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Pillow warns about images above its own pixel limit; the decoder process forwards the
    warning, and it is logged as an event (never printed as stray text)."""
    with caplog.at_level(logging.WARNING, logger="visinspect.decoders"):
        response = client.post("/predict", files={"file": ("big.gif", canvas_gif(9500, 9500))})
    assert response.status_code == 413
    events = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    assert any(
        e["event"] == "decode.warning" and "DecompressionBombWarning" in e["message"]
        for e in events
    ), events
