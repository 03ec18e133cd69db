"""Detectors, end to end over HTTP on PostgreSQL as Kubernetes runs it (DATABASE_APP_ROLE): good
shots of a real photograph classified and kept, labelled `ok`, a detector trained on them (in a
real `visinspect detector train` child process), promoted with the heads' lifecycle, answering
score, verdict and region with every prediction, its heat map served, measured by the labels
that came after it, retired; and the refusals.

The shots are bench/defects.py's: scikit-image's coffee photograph with pose, light and JPEG
jitter, and drawn scratches, stains and missing parts.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from bench.defects import Shot, product, shots
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import create_engine, text

from tests.support import PHOTOS, app_role_database, make_settings, running_app, services_of

pytestmark = pytest.mark.postgres

KEY = {"X-API-Key": "alices-key-0123456"}
SET = "coffee-line"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    with app_role_database() as (owner_url, app_url):
        settings = make_settings(
            app_url,
            api_keys="alice:alices-key-0123456",
            heads_dir=tmp_path_factory.mktemp("heads"),
            image_store_dir=tmp_path_factory.mktemp("images"),
            heads_refresh_s=0.2,
            migrate_on_start=False,
        )
        with running_app(settings) as client:
            yield client, owner_url


@pytest.fixture
def line(served: tuple[TestClient, str]) -> TestClient:
    return served[0]


@pytest.fixture
def owner_url(served: tuple[TestClient, str]) -> str:
    return served[1]


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    return product(PHOTOS / "coffee.png")


def predict(client: TestClient, shot: Shot, **params: Any) -> dict[str, Any]:
    response = client.post(
        "/predict", files={"file": ("shot.jpg", shot.jpeg)}, params=params, headers=KEY
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def label(client: TestClient, prediction_id: int, class_name: str) -> None:
    response = client.post(
        f"/predictions/{prediction_id}/labels",
        json={"label_set": SET, "class": class_name},
        headers=KEY,
    )
    assert response.status_code == 201, response.text


def overlaps(a: list[int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_a_detector_is_trained_promoted_answers_and_is_measured(
    line: TestClient, coffee: Image.Image
) -> None:
    created = line.post("/label-sets", json={"name": SET, "classes": ["ok", "defect"]}, headers=KEY)
    assert created.status_code == 201, created.text
    before = predict(line, next(shots(coffee, "good", 1, seed=40)))
    assert before["anomaly"] is None
    assert before["anomalies"] == []
    for shot in shots(coffee, "good", 12, seed=41):
        label(line, predict(line, shot)["id"], "ok")

    trained = line.post(f"/label-sets/{SET}/detectors", json={"good_class": "ok"}, headers=KEY)
    assert trained.status_code == 201, trained.text
    detector = trained.json()
    assert (detector["kind"], detector["version"], detector["status"]) == (
        "detector",
        1,
        "candidate",
    )
    assert detector["classes"] == ["ok"]
    assert detector["trained_by"] == "alice"
    assert detector["training"]["good_images"] == 12
    assert detector["metrics"]["threshold"] > 0
    assert detector["metrics"]["frame"] == 224
    listed = line.get(f"/label-sets/{SET}/detectors", headers=KEY).json()
    assert [d["id"] for d in listed] == [detector["id"]]
    assert line.get(f"/label-sets/{SET}/heads", headers=KEY).json() == []  # its own kind

    promoted = line.post(f"/heads/{detector['id']}/promote", headers=KEY)
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["status"] == "active"

    good = predict(line, next(shots(coffee, "good", 1, seed=42)))
    answer = good["anomaly"]
    assert answer["detector"] == SET
    assert answer["detector_id"] == detector["id"]
    assert (answer["version"], answer["threshold"], answer["verdict"]) == (1, 1.0, "ok")
    assert 0 < answer["score"] < 1.0
    assert answer["region"] is None
    assert good["anomalies"] == [answer]

    scratched = next(shots(coffee, "missing", 1, seed=43))
    bad = predict(line, scratched, label_set=SET)
    flagged = bad["anomaly"]
    assert flagged["verdict"] == "anomalous"
    assert flagged["score"] >= 1.0
    assert scratched.box is not None
    assert overlaps(flagged["region"], scratched.box)
    assert flagged["region"][2] <= bad["image_width"]
    assert flagged["region"][3] <= bad["image_height"]

    heat = line.get(f"/predictions/{bad['id']}/anomaly-map", headers=KEY)
    assert heat.status_code == 200
    assert heat.headers["content-type"] == "image/png"
    png = Image.open(io.BytesIO(heat.content))
    assert png.mode == "RGBA"
    assert png.size == (bad["image_width"], bad["image_height"])
    missing = line.get(f"/predictions/{before['id']}/anomaly-map", headers=KEY)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "anomaly_map_not_found")
    unknown = line.get("/predictions/999999999/anomaly-map", headers=KEY)
    assert unknown.json()["error"]["code"] == "prediction_not_found"

    stained = predict(line, next(shots(coffee, "stain", 1, seed=45)))
    queue = line.get(f"/label-sets/{SET}/anomalies", params={"limit": 1}, headers=KEY).json()
    (first,) = queue["items"]
    assert queue["next_cursor"] is not None
    rest = line.get(
        f"/label-sets/{SET}/anomalies", params={"cursor": queue["next_cursor"]}, headers=KEY
    ).json()["items"]
    flagged_ids = [first["prediction_id"], *(i["prediction_id"] for i in rest)]
    assert set(flagged_ids) >= {bad["id"]}
    assert good["id"] not in flagged_ids
    scores = [first["score"], *(i["score"] for i in rest)]
    assert scores == sorted(scores, reverse=True)  # most anomalous first
    assert all(s >= 1.0 for s in scores)
    shown = line.get(f"/predictions/{bad['id']}", headers=KEY).json()
    assert shown["anomaly"] == flagged  # the history shows what /predict answered
    listed_rows = line.get("/predictions", params={"limit": 5}, headers=KEY).json()["items"]
    assert next(r for r in listed_rows if r["id"] == stained["id"])["anomaly"] == stained["anomaly"]

    label(line, good["id"], "ok")
    label(line, bad["id"], "defect")
    after_labels = line.get(f"/label-sets/{SET}/anomalies", headers=KEY).json()["items"]
    assert bad["id"] not in {i["prediction_id"] for i in after_labels}  # labelled: it left
    quality = line.get(f"/label-sets/{SET}/quality", headers=KEY).json()
    (measured,) = quality["detectors"]
    assert (measured["good"], measured["false_rejects"], measured["false_reject_rate"]) == (1, 0, 0)
    assert (measured["defective"], measured["escapes"], measured["escape_rate"]) == (1, 0, 0)

    events = line.get(f"/label-sets/{SET}/events", headers=KEY).json()
    assert [(e["kind"], e["action"]) for e in events[:2]] == [
        ("detector", "promote"),
        ("detector", "trained"),
    ]
    rollback = line.post(f"/heads/{detector['id']}/rollback", headers=KEY)
    assert rollback.json()["error"]["code"] == "invalid_head_change"  # nothing it replaced
    assert line.post(f"/heads/{detector['id']}/retire", headers=KEY).status_code == 200
    after = predict(line, next(shots(coffee, "good", 1, seed=44)))
    assert after["anomaly"] is None


def test_detector_training_refusals(line: TestClient, coffee: Image.Image) -> None:
    name = "few-goods"
    assert (
        line.post(
            "/label-sets", json={"name": name, "classes": ["good", "bad"]}, headers=KEY
        ).status_code
        == 201
    )
    ids = [predict(line, s)["id"] for s in shots(coffee, "good", 2, seed=50)]
    for prediction_id in ids:
        response = line.post(
            f"/predictions/{prediction_id}/labels",
            json={"label_set": name, "class": "good"},
            headers=KEY,
        )
        assert response.status_code == 201
    no_class = line.post(f"/label-sets/{name}/detectors", json={"good_class": "ok"}, headers=KEY)
    assert (no_class.status_code, no_class.json()["error"]["code"]) == (422, "invalid_label_set")
    few = line.post(f"/label-sets/{name}/detectors", json={"good_class": "good"}, headers=KEY)
    assert (few.status_code, few.json()["error"]["code"]) == (422, "too_few_good_images")
    assert "at least 4 good images; 2" in few.json()["error"]["message"]
    gone = line.post(
        f"/label-sets/{name}/detectors",
        json={"good_class": "good", "prediction_ids": [ids[0], 987654321]},
        headers=KEY,
    )
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "prediction_not_found")
    unknown = line.post("/label-sets/nope/detectors", json={}, headers=KEY)
    assert unknown.status_code == 404
    extra = line.post(f"/label-sets/{name}/detectors", json={"goodclass": "good"}, headers=KEY)
    assert extra.status_code == 422
    assert line.get(f"/label-sets/{name}/detectors", headers=KEY).json() == []  # nothing kept


def test_detectors_from_named_predictions_and_a_broken_one_is_skipped(
    line: TestClient, coffee: Image.Image
) -> None:
    name = "named-goods"
    created = line.post("/label-sets", json={"name": name, "classes": ["ok", "bad"]}, headers=KEY)
    assert created.status_code == 201, created.text
    ids = [predict(line, s)["id"] for s in shots(coffee, "good", 6, seed=60)]
    body = {"prediction_ids": ids, "false_reject": 0.05}
    trained = line.post(f"/label-sets/{name}/detectors", json=body, headers=KEY)
    assert trained.status_code == 201, trained.text
    assert trained.json()["training"]["good_images"] == 6
    assert trained.json()["training"]["false_reject_target"] == 0.05
    too_loose = {"prediction_ids": ids, "false_reject": 0.9}
    assert (
        line.post(f"/label-sets/{name}/detectors", json=too_loose, headers=KEY).status_code == 422
    )
    assert line.post(f"/heads/{trained.json()['id']}/promote", headers=KEY).status_code == 200
    answered = predict(line, next(shots(coffee, "good", 1, seed=61)), label_set=name)
    assert answered["anomaly"]["detector"] == name
    assert answered["anomaly"]["verdict"] == "ok"


def test_a_broken_detector_is_skipped_and_counted(
    line: TestClient, owner_url: str, coffee: Image.Image
) -> None:
    name = "broken-goods"
    created = line.post("/label-sets", json={"name": name, "classes": ["ok", "bad"]}, headers=KEY)
    assert created.status_code == 201, created.text
    ids = [predict(line, s)["id"] for s in shots(coffee, "good", 4, seed=70)]
    trained = line.post(f"/label-sets/{name}/detectors", json={"prediction_ids": ids}, headers=KEY)
    head_id = trained.json()["id"]
    engine = create_engine(owner_url)  # the serving role may not change an artifact; an owner may
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE heads SET artifact_sha256 = :bad WHERE id = :id"),
            {"bad": "0" * 64, "id": head_id},
        )
    engine.dispose()
    registry = services_of(line).heads.registry
    failures: list[str] = []
    registry.on_failure = failures.append
    try:
        assert line.post(f"/heads/{head_id}/promote", headers=KEY).status_code == 200
        answered = predict(line, next(shots(coffee, "good", 1, seed=71)))
    finally:
        registry.on_failure = None
        line.post(f"/heads/{head_id}/retire", headers=KEY)
    # Skipped, and the prediction answered all the same (by the other sets' detectors).
    assert name not in {a["detector"] for a in answered["anomalies"]}
    assert "broken_artifact" in failures
