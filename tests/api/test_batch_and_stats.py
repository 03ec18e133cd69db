"""POST /predict/batch (per-item results and errors) and GET /predictions/stats (SQL counts),
through the HTTP layer of the session's apps (PostgreSQL and SQLite). The statistics themselves,
across a UTC midnight on purpose, are tested in tests/services/test_history.py."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from tests.support import count_rows, rows_with_request_id


def test_batch_gives_each_file_its_own_result(client: TestClient, photos: Path) -> None:
    files = [
        ("files", ("coffee.png", (photos / "coffee.png").read_bytes(), "image/png")),
        ("files", ("notes.txt", b"not an image", "text/plain")),
        ("files", ("camera.png", (photos / "camera.png").read_bytes(), "image/png")),
        ("files", ("empty.jpg", b"", "image/jpeg")),
    ]
    request_id = uuid.uuid4().hex
    response = client.post(
        "/predict/batch", files=files, params={"top_k": 2}, headers={"X-Request-ID": request_id}
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["succeeded"], body["failed"]) == (2, 2)
    items = body["items"]
    assert [i["filename"] for i in items] == ["coffee.png", "notes.txt", "camera.png", "empty.jpg"]
    assert [i["status"] for i in items] == [200, 415, 200, 400]
    assert items[0]["prediction"]["predictions"][0]["class_name"] == "espresso"
    assert len(items[0]["prediction"]["predictions"]) == 2
    assert items[2]["prediction"]["predictions"][0]["class_name"] == "tripod"
    assert items[1]["error"]["code"] == "not_an_image"
    assert items[3]["error"]["code"] == "empty_file"
    stored = rows_with_request_id(client, request_id)
    assert sorted(r.id for r in stored) == sorted(i["prediction"]["id"] for i in items[::2])


def test_batch_file_limit(client: TestClient) -> None:
    before = count_rows(client)
    response = client.post("/predict/batch", files=[("files", ("c.png", b"x"))] * 17)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "too_many_files"
    assert count_rows(client) == before


def test_stats_count_per_class_and_day(client: TestClient, photos: Path) -> None:
    since = datetime.now(UTC) - timedelta(microseconds=1)
    posted = [
        client.post("/predict", files={"file": (name, (photos / name).read_bytes())}).json()
        for name in ["coffee.png", "coffee.png", "camera.png", "coffee.png"]
    ]
    window = {"created_after": since.isoformat()}
    stats = client.get("/predictions/stats", params=window).json()
    assert stats["total"] == 4
    assert stats["by_class"] == [
        {"class_name": "espresso", "count": 3},
        {"class_name": "tripod", "count": 1},
    ]
    # The UTC days the rows really fell on (a run across midnight spans two).
    days: dict[str, int] = {}
    for p in posted:
        day = datetime.fromisoformat(p["created_at"]).astimezone(UTC).date().isoformat()
        days[day] = days.get(day, 0) + 1
    assert stats["by_day"] == [{"day": d, "count": n} for d, n in sorted(days.items())]

    only = client.get("/predictions/stats", params={**window, "class_name": "tripod"}).json()
    assert only["total"] == 1
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    later = client.get("/predictions/stats", params={"created_after": tomorrow}).json()
    assert later == {"total": 0, "by_class": [], "by_day": []}
    assert client.get("/predictions/stats", params={"top_classes": 0}).status_code == 422


def test_out_of_range_dates_are_422_not_500(client: TestClient) -> None:
    for params in (
        {"created_after": "0001-01-01T00:00:00+01:00"},
        {"created_before": "9999-12-31T23:59:59-14:00"},
    ):
        for path in ("/predictions", "/predictions/stats"):
            response = client.get(path, params=params)
            assert response.status_code == 422, (path, params, response.text)
            assert response.json()["error"]["code"] == "invalid_time_range"
    nul = client.get("/predictions", params={"class_name": "a\x00b"})
    assert (nul.status_code, nul.json()["error"]["code"]) == (422, "invalid_request")
