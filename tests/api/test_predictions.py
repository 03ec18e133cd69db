"""GET /predictions: newest first, paging, filters; GET /predictions/{id}."""

from __future__ import annotations

import base64
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


def test_cursor_paging_walks_the_history_once(
    history: tuple[TestClient, list[dict]],  # type: ignore[type-arg]
) -> None:
    """next_cursor leads through every row exactly once, newest first, and ends with null; the
    review queue's order pages the same way."""
    client, made = history
    for params, expected in [
        ({}, [b["id"] for b in reversed(made)]),
        (
            {"reviewed": "false"},
            [
                b["id"]
                for b in sorted(made, key=lambda b: (b["predictions"][0]["confidence"], b["id"]))
            ],
        ),
    ]:
        seen, cursor = [], None
        while True:
            page = client.get(
                "/predictions",
                params={**params, "limit": 2, **({"cursor": cursor} if cursor else {})},
            ).json()
            assert (page["total"], page["total_exact"]) == (5, True)
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == expected


def test_cursor_and_offset_refusals(history: tuple[TestClient, list[dict]]) -> None:  # type: ignore[type-arg]
    client, _ = history
    newest = client.get("/predictions", params={"limit": 1}).json()["next_cursor"]
    queue = client.get("/predictions", params={"limit": 1, "reviewed": "false"}).json()
    cases = [
        ({"offset": 10_001}, "offset_too_deep"),
        ({"cursor": newest, "offset": 2}, "invalid_request"),
        ({"cursor": "not-a-cursor"}, "invalid_cursor"),
        ({"cursor": "eyJvIjoibmV3ZXN0In0="}, "invalid_cursor"),  # {"o":"newest"}: no position
        ({"cursor": queue["next_cursor"]}, "invalid_cursor"),  # another order's cursor
        # {"o":"least_confident","i":1,"c":NaN}: a forged, non-finite position
        (
            {"cursor": "eyJvIjoibGVhc3RfY29uZmlkZW50IiwiaSI6MSwiYyI6TmFOfQ==", "reviewed": "false"},
            "invalid_cursor",
        ),
    ]
    # Ids no bigint holds (they were a 500, or a reset connection on PostgreSQL), and ids that
    # are not whole numbers of a row.
    for order, position in [
        ("newest", '"t":"2026-01-01T00:00:00+00:00"'),
        ("least_confident", '"c":0.5'),
    ]:
        for row_id in ("1e400", str(10**29), str(2**63), "0", "-1", "1.5", "true", '"7"'):
            forged = f'{{"o":"{order}","i":{row_id},{position}}}'
            cursor = base64.urlsafe_b64encode(forged.encode()).decode()
            reviewed = {"reviewed": "false"} if order == "least_confident" else {}
            cases.append(({"cursor": cursor, **reviewed}, "invalid_cursor"))
    for params, code in cases:
        response = client.get("/predictions", params=params)
        assert (response.status_code, response.json()["error"]["code"]) == (422, code), params
    largest = '{"o":"newest","i":9223372036854775807,"t":"2026-01-01T00:00:00+00:00"}'
    page = client.get(
        "/predictions", params={"cursor": base64.urlsafe_b64encode(largest.encode()).decode()}
    )
    assert page.status_code == 200, page.text  # the largest bigint is still a position


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
