"""POST /predict over the real app, against PostgreSQL and the SQLite default."""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.support import (
    count_rows,
    gated_model,
    make_settings,
    rows_with_request_id,
    running_app,
    services_of,
    wait_until,
)
from visinspect.services.predict import STORED_TOP_K


def post_photo(
    client: TestClient, path: Path, params: dict[str, object] | None = None
) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    request_id = uuid.uuid4().hex
    with path.open("rb") as fh:
        response = client.post(
            "/predict",
            files={"file": (path.name, fh, "application/octet-stream")},
            params=params,
            headers={"X-Request-ID": request_id},
        )
    return response.status_code, response.json(), request_id


def test_predicts_and_stores_exactly_one_matching_row(client: TestClient, photos: Path) -> None:
    status, body, request_id = post_photo(client, photos / "coffee.png")

    assert status == 200, body
    assert body["model_name"] == "efficientnet_lite0"
    assert body["model_version"].startswith("sha256:57934424")
    assert next(p["class_name"] for p in body["predictions"]) == "espresso"
    assert len(body["predictions"]) == 3
    assert body["predictions"][0] == {
        "class_id": 967,
        "class_name": "espresso",
        "confidence": pytest.approx(0.95, abs=0.01),
    }
    assert body["request_id"] == request_id
    assert (body["image_width"], body["image_height"], body["image_format"]) == (600, 400, "PNG")
    assert body["filename"] == "coffee.png"
    assert body["latency_ms"] > 0
    assert body["created_at"].endswith("Z") or "+00:00" in body["created_at"]

    rows = rows_with_request_id(client, request_id)
    assert len(rows) == 1
    row = rows[0]
    assert row.id == body["id"]
    assert row.class_name == "espresso"
    assert row.class_id == 967
    assert row.confidence == pytest.approx(body["predictions"][0]["confidence"])
    assert row.top_k == body["predictions"]
    assert row.model_name == body["model_name"]
    assert row.model_version == body["model_version"]
    assert row.image_sha256 == body["image_sha256"]
    assert row.image_bytes == (photos / "coffee.png").stat().st_size
    assert row.created_at.tzinfo is not None


def test_prediction_can_be_read_back(client: TestClient, photos: Path) -> None:
    _, body, _ = post_photo(client, photos / "chelsea.png")
    fetched = client.get(f"/predictions/{body['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == body


@pytest.mark.parametrize("top_k", [1, 5, 1000])
def test_top_k(client: TestClient, photos: Path, top_k: int) -> None:
    status, body, _ = post_photo(client, photos / "chelsea.png", {"top_k": top_k})
    assert status == 200
    confidences = [p["confidence"] for p in body["predictions"]]
    assert len(confidences) == top_k
    assert confidences == sorted(confidences, reverse=True)
    assert body["predictions"][0]["class_name"] in {"tiger cat", "Egyptian cat", "tabby"}
    # The row keeps the first STORED_TOP_K: what the history sends with every row.
    stored = client.get(f"/predictions/{body['id']}").json()["predictions"]
    assert stored == body["predictions"][:STORED_TOP_K]


@pytest.mark.parametrize("top_k", [0, -1, 1001, "three", 2.5])
def test_top_k_out_of_range_is_refused_and_stores_nothing(
    client: TestClient, photos: Path, top_k: object
) -> None:
    status, body, request_id = post_photo(client, photos / "coffee.png", {"top_k": top_k})
    assert status == 422
    assert body["error"]["code"] == "validation_error"
    assert "top_k" in body["error"]["message"]
    assert rows_with_request_id(client, request_id) == []


def _encoded(fmt: str, size: tuple[int, int] = (320, 240), **params: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 120, 40)).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _animated_gif() -> bytes:
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "green")]
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


BAD_UPLOADS = {
    "empty file": (b"", 400, "empty_file"),
    "text file": (b"name,value\nwidget,3\n", 415, "not_an_image"),
    "pdf": (b"%PDF-1.4\n1 0 obj<<>>endobj\n", 415, "not_an_image"),
    "truncated jpeg": (_encoded("JPEG")[:900], 422, "corrupt_image"),
    "truncated png": (_encoded("PNG", (640, 480), compress_level=0)[:5000], 422, "corrupt_image"),
    "ppm image": (_encoded("PPM"), 415, "unsupported_image_format"),
    "ico image": (_encoded("ICO", (64, 64)), 415, "unsupported_image_format"),
    "animated gif": (_animated_gif(), 415, "animated_image_not_supported"),
    "pixel bomb": (_encoded("PNG", (12_000, 12_000)), 413, "image_too_many_pixels"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_uploads_get_a_precise_error_and_store_nothing(client: TestClient, case: str) -> None:
    data, expected_status, expected_code = BAD_UPLOADS[case]
    request_id = uuid.uuid4().hex
    response = client.post(
        "/predict",
        files={"file": ("upload.jpg", data, "image/jpeg")},  # a lying content type changes nothing
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == expected_status, response.text
    error = response.json()["error"]
    assert error["code"] == expected_code
    assert error["message"]
    assert error["request_id"] == request_id == response.headers["x-request-id"]
    assert rows_with_request_id(client, request_id) == []


def test_missing_file_field(client: TestClient) -> None:
    response = client.post("/predict", data={"image": "coffee.png"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    assert "file" in response.json()["error"]["message"]


def test_not_multipart_at_all(client: TestClient) -> None:
    response = client.post("/predict", json={"file": "aGVsbG8="})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


def test_request_id_is_generated_or_echoed(client: TestClient) -> None:
    generated = client.get("/health/live").headers["x-request-id"]
    assert len(generated) == 32
    assert (
        client.get("/health/live", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"]
        == "abc-123"
    )
    # An id that is unsafe to log or to put in a header is replaced, not echoed.
    replaced = client.get("/health/live", headers={"X-Request-ID": "x" * 500})
    assert replaced.headers["x-request-id"] != "x" * 500


@pytest.fixture(scope="module")
def small_limit_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    path = tmp_path_factory.mktemp("limits") / "limits.db"
    settings = make_settings(f"sqlite:///{path}", max_upload_bytes=100_000)
    with running_app(settings) as client:
        yield client


def test_body_over_the_limit_is_413(small_limit_client: TestClient) -> None:
    data = _encoded("PNG", (800, 600), compress_level=0)
    assert len(data) > 100_000
    response = small_limit_client.post("/predict", files={"file": ("big.png", data, "image/png")})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert "100000" in response.json()["error"]["message"]
    assert count_rows(small_limit_client) == 0


def test_streamed_body_without_length_is_cut_off_at_the_limit(
    small_limit_client: TestClient,
) -> None:
    boundary = "visinspectboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def chunks() -> Iterator[bytes]:
        yield head
        for _ in range(100):  # 100 x 10 kB: ten times the limit, never announced
            yield b"\x00" * 10_000

    response = small_limit_client.post(
        "/predict",
        content=chunks(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_declared_oversize_is_refused_on_any_route(small_limit_client: TestClient) -> None:
    response = small_limit_client.post(
        "/health/live", content=b"x" * 200_000, headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_unknown_route_and_method_use_the_error_body(client: TestClient) -> None:
    missing = client.get("/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = client.get("/predict")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"


def test_full_inference_queue_answers_503_at_once_and_stores_nothing(
    tmp_path: Path, photos: Path
) -> None:
    settings = make_settings(
        f"sqlite:///{tmp_path / 'q.db'}", max_queue=1, max_batch_size=1, inference_lanes=1
    )
    coffee = (photos / "coffee.png").read_bytes()
    with running_app(settings) as client, gated_model(services_of(client).classifier) as gate:
        results: list[int] = []

        def post() -> None:
            results.append(client.post("/predict", files={"file": ("c.png", coffee)}).status_code)

        running = threading.Thread(target=post)
        running.start()
        assert gate.entered.wait(30)  # one image inside the model
        queued = threading.Thread(target=post)
        queued.start()
        batcher = services_of(client).batcher
        wait_until(lambda: batcher.queued >= 1, what="the second image to queue")
        request_id = uuid.uuid4().hex
        refused = client.post(
            "/predict", files={"file": ("c.png", coffee)}, headers={"X-Request-ID": request_id}
        )
        gate.release.set()
        running.join(30)
        queued.join(30)

        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "overloaded"
        assert refused.headers["retry-after"]
        assert rows_with_request_id(client, request_id) == []
        assert sorted(results) == [200, 200]
        assert count_rows(client) == 2
