"""POST /predictions/{id}/review, GET /predictions/{id}/reviews, the review queue and
GET /predictions/quality over HTTP, on real predictions of real photos (PostgreSQL and SQLite);
the reviewer is the API key's name."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support import app_on, make_settings, running_app, upload_all

PHOTOS = ["coffee.png", "camera.png", "chelsea.png", "rocket.jpg"]
CUP = 968


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def made(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, photos: Path
) -> Iterator[tuple[TestClient, list[dict[str, Any]]]]:
    """A fresh database holding four real predictions."""
    with app_on(request.param, tmp_path_factory, "reviews") as client:
        yield client, upload_all(client, photos, PHOTOS)


def test_review_round_trip_and_the_latest_counts(
    made: tuple[TestClient, list[dict[str, Any]]],
) -> None:
    client, predictions = made
    coffee = predictions[0]
    first = client.post(f"/predictions/{coffee['id']}/review", json={"verdict": "correct"})
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["verdict"], body["true_class_id"], body["true_class_name"], body["reviewer"]) == (
        "correct",
        coffee["predictions"][0]["class_id"],
        "espresso",
        None,  # keys are off
    )
    second = client.post(
        f"/predictions/{coffee['id']}/review",
        json={"verdict": "wrong", "true_class_id": CUP, "note": "only the cup counts"},
    )
    assert second.status_code == 201
    assert second.json()["true_class_name"] == "cup"
    history = client.get(f"/predictions/{coffee['id']}/reviews").json()
    assert [r["id"] for r in history] == [second.json()["id"], body["id"]]
    shown = client.get(f"/predictions/{coffee['id']}").json()
    assert shown["review"] == second.json()
    listed = client.get("/predictions", params={"reviewed": "true"}).json()
    assert [item["id"] for item in listed["items"]] == [coffee["id"]]
    assert listed["items"][0]["review"]["verdict"] == "wrong"
    quality = client.get("/predictions/quality").json()
    assert quality["overall"] == {"reviewed": 1, "correct": 0, "accuracy": 0.0}
    assert quality["confusions"] == [
        {
            "predicted_class_id": coffee["predictions"][0]["class_id"],
            "predicted_class_name": "espresso",
            "true_class_id": CUP,
            "true_class_name": "cup",
            "count": 1,
        }
    ]


def test_the_queue_is_unreviewed_least_confident_first(
    made: tuple[TestClient, list[dict[str, Any]]],
) -> None:
    client, predictions = made
    client.post(f"/predictions/{predictions[0]['id']}/review", json={"verdict": "correct"})
    queue = client.get("/predictions", params={"reviewed": "false"}).json()
    confidences = [item["confidence"] for item in (i["predictions"][0] for i in queue["items"])]
    assert confidences == sorted(confidences)
    assert predictions[0]["id"] not in [item["id"] for item in queue["items"]]
    assert all(item["review"] is None for item in queue["items"])
    lowest = min(p["predictions"][0]["confidence"] for p in predictions[1:])
    capped = client.get(
        "/predictions", params={"reviewed": "false", "max_confidence": lowest}
    ).json()
    assert [i["predictions"][0]["confidence"] for i in capped["items"]] == [lowest]
    newest = client.get("/predictions", params={"reviewed": "false", "order": "newest"}).json()
    assert [i["id"] for i in newest["items"]] == sorted(
        (i["id"] for i in newest["items"]), reverse=True
    )


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"verdict": "wrong"}, 422, "invalid_review"),
        ({"verdict": "correct", "true_class_id": CUP}, 422, "invalid_review"),
        ({"verdict": "wrong", "true_class_id": 1000}, 422, "validation_error"),
        ({"verdict": "maybe"}, 422, "validation_error"),
        ({"verdict": "correct", "reviewer": "me"}, 422, "validation_error"),
        ({"verdict": "correct", "note": "x" * 2001}, 422, "validation_error"),
    ],
)
def test_a_bad_review_is_a_422_and_stores_nothing(
    made: tuple[TestClient, list[dict[str, Any]]], body: dict[str, Any], status: int, code: str
) -> None:
    client, predictions = made
    target = predictions[3]["id"]
    before = client.get(f"/predictions/{target}/reviews").json()
    response = client.post(f"/predictions/{target}/review", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert client.get(f"/predictions/{target}/reviews").json() == before


def test_an_unknown_prediction_is_a_404(made: tuple[TestClient, list[dict[str, Any]]]) -> None:
    client, _ = made
    for response in (
        client.post("/predictions/999999/review", json={"verdict": "correct"}),
        client.get("/predictions/999999/reviews"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "prediction_not_found"


def test_reviews_come_a_page_at_a_time(made: tuple[TestClient, list[dict[str, Any]]]) -> None:
    client, predictions = made
    target = predictions[-1]["id"]
    for n in range(3):
        client.post(f"/predictions/{target}/review", json={"verdict": "correct", "note": f"{n}"})
    everything = client.get(f"/predictions/{target}/reviews").json()
    first = client.get(f"/predictions/{target}/reviews", params={"limit": 2}).json()
    rest = client.get(
        f"/predictions/{target}/reviews", params={"limit": 200, "before": first[-1]["id"]}
    ).json()
    assert len(first) == 2
    assert first + rest == everything
    for refused in ({"limit": 201}, {"limit": 0}, {"before": 0}):
        assert client.get(f"/predictions/{target}/reviews", params=refused).status_code == 422


def test_the_reviewer_is_the_api_keys_name(tmp_path: Path, photos: Path) -> None:
    digest = hashlib.sha256(b"bobs-key-01234567").hexdigest()
    settings = make_settings(
        f"sqlite:///{tmp_path / 'keys.db'}",
        api_keys=f"alice:alices-key-0123456, bob:sha256:{digest}, plain-key-0123456",
    )
    with running_app(settings) as client:
        upload = client.post(
            "/predict",
            files={"file": ("coffee.png", (photos / "coffee.png").read_bytes())},
            headers={"X-API-Key": "alices-key-0123456"},
        ).json()
        url = f"/predictions/{upload['id']}/review"
        assert client.post(url, json={"verdict": "correct"}).status_code == 401
        assert (
            client.post(url, json={"verdict": "correct"}, headers={"X-API-Key": "nope"}).status_code
            == 403
        )
        names = [
            client.post(
                url, json={"verdict": "correct"}, headers={"Authorization": f"Bearer {key}"}
            ).json()["reviewer"]
            for key in ("alices-key-0123456", "bobs-key-01234567", "plain-key-0123456")
        ]
        # An unnamed key is named by its place in API_KEYS: nothing of its digest is shown.
        assert names == ["alice", "bob", "key-3"]


def test_the_classes_a_review_may_name(made: tuple[TestClient, list[dict[str, Any]]]) -> None:
    client, _ = made
    classes = client.get("/classes").json()
    assert len(classes) == 1000
    assert classes[967] == {"class_id": 967, "class_name": "espresso"}
    assert [c["class_id"] for c in classes] == list(range(1000))
