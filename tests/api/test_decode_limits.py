"""Decode limits through the real app (PostgreSQL and SQLite): decode budgets answer 413/422 and
store nothing, a replaced decoder is a metric, and decoder warnings reach the JSON log. The HTTP
limits are in `test_http_limits.py`."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.decode_bombs import canvas_gif, scan_bomb, warning_tiff
from tests.support import (
    make_settings,
    rows_with_request_id,
    running_app,
)
from visinspect.inference.decoders import WARNINGS_KEPT


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


def test_a_file_that_warns_per_entry_logs_ten_lines_and_a_count(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """180,000 Pillow warnings from one 0.7 MB TIFF: the first ten are logged, the rest counted
    in one line (before: one log line each, written by the server)."""
    with caplog.at_level(logging.WARNING, logger="visinspect.decoders"):
        response = client.post("/predict", files={"file": ("t.tif", warning_tiff())})
    assert response.status_code == 200  # the image itself is fine
    events = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    logged = [e for e in events if e["event"] == "decode.warning"]
    assert len(logged) == WARNINGS_KEPT
    assert "Tag data larger than file" in logged[0]["message"]
    (dropped,) = [e for e in events if e["event"] == "decode.warnings_dropped"]
    assert dropped["count"] == 180_000 - WARNINGS_KEPT
