"""GET /predictions: newest first, paging, filters; GET /predictions/{id}."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.support import app_on, upload_all

UPLOADS = ["coffee.png", "camera.png", "coffee.png", "chelsea.png", "camera.png"]


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def history(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, photos: Path
) -> Iterator[tuple[TestClient, list[dict]]]:  # type: ignore[type-arg]
    """A fresh database holding five real predictions, made one after another."""
    with app_on(request.param, tmp_path_factory, "history") as client:
        yield client, upload_all(client, photos, UPLOADS)


def test_newest_first_with_total(history: tuple[TestClient, list[dict]]) -> None:  # type: ignore[type-arg]
    client, made = history
    page = client.get("/predictions").json()
    assert page["total"] == 5
    assert [item["id"] for item in page["items"]] == [b["id"] for b in reversed(made)]
    assert page["items"][0] == made[-1]


def test_paging(history: tuple[TestClient, list[dict]]) -> None:  # type: ignore[type-arg]
    client, made = history
    first = client.get("/predictions", params={"limit": 2}).json()
    second = client.get("/predictions", params={"limit": 2, "offset": 2}).json()
    last = client.get("/predictions", params={"limit": 2, "offset": 4}).json()
    ids = [i["id"] for p in (first, second, last) for i in p["items"]]
    assert ids == [b["id"] for b in reversed(made)]
    assert (first["limit"], second["offset"], last["total"]) == (2, 2, 5)


def test_filter_by_class_name(history: tuple[TestClient, list[dict]]) -> None:  # type: ignore[type-arg]
    client, _ = history
    page = client.get("/predictions", params={"class_name": "espresso"}).json()
    assert page["total"] == 2
    assert {i["predictions"][0]["class_name"] for i in page["items"]} == {"espresso"}
    assert client.get("/predictions", params={"class_name": "sports car"}).json()["total"] == 0


def test_filter_by_time_range(history: tuple[TestClient, list[dict]]) -> None:  # type: ignore[type-arg]
    client, made = history
    third = datetime.fromisoformat(made[2]["created_at"])
    after = client.get("/predictions", params={"created_after": third.isoformat()}).json()
    assert [i["id"] for i in after["items"]] == [b["id"] for b in reversed(made[2:])]
    before = client.get("/predictions", params={"created_before": third.isoformat()}).json()
    assert [i["id"] for i in before["items"]] == [b["id"] for b in reversed(made[:2])]
    future = (datetime.now(UTC) + timedelta(days=1)).replace(tzinfo=None).isoformat()
    assert client.get("/predictions", params={"created_after": future}).json()["total"] == 0


def test_filter_by_image(history: tuple[TestClient, list[dict]]) -> None:  # type: ignore[type-arg]
    client, made = history
    digest = made[1]["image_sha256"]
    page = client.get("/predictions", params={"image_sha256": digest.upper()}).json()
    assert [i["id"] for i in page["items"]] == [made[4]["id"], made[1]["id"]]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 201},
        {"offset": -1},
        {"created_after": "yesterday"},
        {"image_sha256": "abc"},
        {"created_after": "2026-01-02T00:00:00Z", "created_before": "2026-01-01T00:00:00Z"},
    ],
)
def test_invalid_queries_are_422(
    history: tuple[TestClient, list[dict]],  # type: ignore[type-arg]
    params: dict[str, object],
) -> None:
    client, _ = history
    response = client.get("/predictions", params=params)
    assert response.status_code == 422
    assert response.json()["error"]["code"] in {"validation_error", "invalid_time_range"}


def test_get_by_id_and_404(history: tuple[TestClient, list[dict]]) -> None:  # type: ignore[type-arg]
    client, made = history
    assert client.get(f"/predictions/{made[0]['id']}").json() == made[0]
    missing = client.get("/predictions/999999")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "prediction_not_found"
    assert client.get("/predictions/zero").status_code == 422
