"""POST /predict/batch (per-item results and errors) and GET /predictions/stats (SQL counts)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.support import count_rows, fresh_postgres_database, make_settings, running_app


@pytest.fixture(params=["postgresql", "sqlite"])
def fresh_client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    if request.param == "postgresql":
        with fresh_postgres_database() as url, running_app(make_settings(url)) as client:
            yield client
    else:
        with running_app(make_settings(f"sqlite:///{tmp_path / 'b.db'}")) as client:
            yield client


def test_batch_gives_each_file_its_own_result(fresh_client: TestClient, photos: Path) -> None:
    files = [
        ("files", ("coffee.png", (photos / "coffee.png").read_bytes(), "image/png")),
        ("files", ("notes.txt", b"not an image", "text/plain")),
        ("files", ("camera.png", (photos / "camera.png").read_bytes(), "image/png")),
        ("files", ("empty.jpg", b"", "image/jpeg")),
    ]
    response = fresh_client.post("/predict/batch", files=files, params={"top_k": 2})
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
    assert count_rows(fresh_client) == 2
    stored = {
        fresh_client.get(f"/predictions/{i['prediction']['id']}").status_code for i in items[::2]
    }
    assert stored == {200}


def test_batch_file_limit(tmp_path: Path, photos: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'l.db'}", max_batch_files=2)
    coffee = (photos / "coffee.png").read_bytes()
    with running_app(settings) as client:
        response = client.post("/predict/batch", files=[("files", ("c.png", coffee))] * 3)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "too_many_files"
        assert count_rows(client) == 0


def test_stats_count_per_class_and_day(fresh_client: TestClient, photos: Path) -> None:
    for name in ["coffee.png", "coffee.png", "camera.png", "coffee.png"]:
        fresh_client.post("/predict", files={"file": (name, (photos / name).read_bytes())})
    stats = fresh_client.get("/predictions/stats").json()
    assert stats["total"] == 4
    assert stats["by_class"] == [
        {"class_name": "espresso", "count": 3},
        {"class_name": "tripod", "count": 1},
    ]
    assert stats["by_day"] == [{"day": datetime.now(UTC).date().isoformat(), "count": 4}]

    only = fresh_client.get("/predictions/stats", params={"class_name": "tripod"}).json()
    assert only["total"] == 1
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    later = fresh_client.get("/predictions/stats", params={"created_after": tomorrow}).json()
    assert later == {"total": 0, "by_class": [], "by_day": []}
    assert fresh_client.get("/predictions/stats", params={"top_classes": 0}).status_code == 422
