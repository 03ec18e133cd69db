"""/metrics: a scrape before and after real traffic shows the values move."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics_move_with_traffic(sqlite_client: TestClient, photos: Path) -> None:
    before = scrape(sqlite_client)
    coffee = (photos / "coffee.png").read_bytes()
    assert sqlite_client.post("/predict", files={"file": ("c.png", coffee)}).status_code == 200
    assert sqlite_client.post("/predict", files={"file": ("x.txt", b"hello")}).status_code == 415
    assert sqlite_client.get("/predictions/123456789").status_code == 404
    after = scrape(sqlite_client)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    ok = {"route": "/predict", "method": "POST", "status": "200"}
    assert delta("visinspect_http_requests_total", **ok) == 1
    assert delta("visinspect_http_requests_total", **{**ok, "status": "415"}) == 1
    by_id = {"route": "/predictions/{prediction_id}", "method": "GET", "status": "404"}
    assert delta("visinspect_http_requests_total", **by_id) == 1
    assert (
        delta("visinspect_http_request_duration_seconds_count", route="/predict", method="POST")
        == 2
    )
    assert delta("visinspect_requests_rejected_total", code="not_an_image") == 1
    assert delta("visinspect_requests_rejected_total", code="prediction_not_found") == 1
    assert delta("visinspect_inference_batch_size_count") == 1
    assert delta("visinspect_inference_seconds_count") == 1
    assert delta("visinspect_inference_seconds_sum") > 0
    assert ("visinspect_inference_queue_depth", ()) in after
    info = [k for k in after if k[0] == "visinspect_model_info"]
    assert dict(info[0][1]) == {
        "model_name": "efficientnet_lite0",
        "model_version": "sha256:579344248a93e230",
        "backend": "onnxruntime",
        "precision": "fp32",
    }


def test_unknown_paths_do_not_create_series(sqlite_client: TestClient) -> None:
    for i in range(5):
        sqlite_client.get(f"/random-{i}")
    after = scrape(sqlite_client)
    routes = {
        dict(labels).get("route") for name, labels in after if name.startswith("visinspect_http")
    }
    assert not any(r and r.startswith("/random") for r in routes)
    assert "unmatched" in routes
