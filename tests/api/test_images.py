"""Kept images over HTTP on PostgreSQL and SQLite: POST /predict keeps the upload and a thumbnail,
GET /predictions/{id}/image serves them with their real type and `nosniff`; a full store or disk
never fails a classification; `visinspect images cleanup` removes what retention says."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import update
from structlog.testing import capture_logs

from tests.support import app_on, mounted_full_disk, services_of
from visinspect.cli import main as cli_main
from visinspect.db.tables import PredictionRecord


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def keeping(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, Path]]:
    """The app with an image store, on a fresh database."""
    store = tmp_path_factory.mktemp("store") / "images"
    with app_on(
        request.param, tmp_path_factory, "images", image_store_dir=store, image_thumbnail_px=128
    ) as client:
        yield client, store


def post(client: TestClient, photos: Path, name: str) -> dict[str, Any]:
    response = client.post("/predict", files={"file": (name, (photos / name).read_bytes())})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_the_upload_and_its_thumbnail_are_served_back(
    keeping: tuple[TestClient, Path], photos: Path
) -> None:
    client, _ = keeping
    data = (photos / "chelsea.png").read_bytes()
    made = post(client, photos, "chelsea.png")
    assert made["image_kept"] is True
    assert client.get(f"/predictions/{made['id']}").json()["image_kept"] is True

    original = client.get(f"/predictions/{made['id']}/image")
    assert original.status_code == 200
    assert original.content == data
    assert original.headers["content-type"] == "image/png"
    assert original.headers["x-content-type-options"] == "nosniff"
    assert original.headers["content-security-policy"].startswith("default-src 'none'")
    assert original.headers["content-length"] == str(len(data))
    assert original.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}-original"'
    assert "private" in original.headers["cache-control"]

    thumbnail = client.get(f"/predictions/{made['id']}/image", params={"variant": "thumbnail"})
    assert thumbnail.status_code == 200
    assert thumbnail.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumbnail.content)) as small, Image.open(io.BytesIO(data)) as big:
        assert small.format == "JPEG"
        assert max(small.size) == 128
        assert abs(small.width / small.height - big.width / big.height) < 0.02

    again = client.get(
        f"/predictions/{made['id']}/image", headers={"If-None-Match": original.headers["etag"]}
    )
    assert (again.status_code, again.content) == (304, b"")


def test_one_copy_per_distinct_image(keeping: tuple[TestClient, Path], photos: Path) -> None:
    client, store = keeping
    first, second = post(client, photos, "rocket.jpg"), post(client, photos, "rocket.jpg")
    assert first["image_sha256"] == second["image_sha256"]
    sha = first["image_sha256"]
    assert sorted(p.name for p in (store / sha[:2]).iterdir() if sha in p.name) == [
        sha,
        f"{sha}.by.anonymous",  # no API keys here: the anonymous share
        f"{sha}.thumb.jpg",
    ]
    for made in (first, second):
        served = client.get(f"/predictions/{made['id']}/image")
        assert served.headers["content-type"] == "image/jpeg"
        assert served.content == (photos / "rocket.jpg").read_bytes()


def test_refusals(keeping: tuple[TestClient, Path], photos: Path) -> None:
    client, _ = keeping
    missing = client.get("/predictions/999999999/image")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "prediction_not_found")
    made = post(client, photos, "coffee.png")
    wrong = client.get(f"/predictions/{made['id']}/image", params={"variant": "../../etc/passwd"})
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (422, "validation_error")


def test_a_row_whose_digest_names_a_path_serves_nothing(
    keeping: tuple[TestClient, Path], photos: Path, tmp_path: Path
) -> None:
    """The path comes from the row, never the request; a row tampered with in the database
    still cannot lead the store outside itself."""
    client, store = keeping
    made = post(client, photos, "camera.png")
    (store.parent / "secret").write_bytes(b"outside the store")
    engine = services_of(client).history.database.engine
    for tampered in ["../secret", "../" * 21 + "x", "/etc/passwd", made["image_sha256"].upper()]:
        with engine.begin() as connection:
            connection.execute(
                update(PredictionRecord)
                .where(PredictionRecord.id == made["id"])
                .values(image_sha256=tampered)
            )
        for variant in ("original", "thumbnail"):
            response = client.get(f"/predictions/{made['id']}/image", params={"variant": variant})
            assert response.status_code == 404, tampered
            assert response.json()["error"]["code"] == "image_not_kept"


def test_a_full_store_records_the_prediction_and_says_why(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    photos: Path,
) -> None:
    with app_on(
        "sqlite",
        tmp_path_factory,
        "full-store",
        image_store_dir=tmp_path / "images",
        image_store_max_bytes=1000,
    ) as client:
        with capture_logs() as logs:
            made = post(client, photos, "coffee.png")
        assert made["image_kept"] is False
        assert client.get(f"/predictions/{made['id']}").json()["image_kept"] is False
        lines = [line for line in logs if line["event"] == "image.not_kept"]
        assert [line["reason"] for line in lines] == ["store_full"]
        assert lines[0]["request_id"] == made["request_id"]
        metrics = client.get("/metrics").text
        assert 'visinspect_images_not_kept_total{reason="store_full"} 1.0' in metrics
        refused = client.get(f"/predictions/{made['id']}/image")
        assert refused.status_code == 404
        assert "was not kept" in refused.json()["error"]["message"]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_full_disk_never_fails_a_classification(
    backend: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, photos: Path
) -> None:
    with (
        mounted_full_disk(tmp_path / "tiny") as disk,
        app_on(backend, tmp_path_factory, "full-disk", image_store_dir=disk / "images") as client,
    ):
        made = post(client, photos, "chelsea.png")
        assert made["image_kept"] is False
        metrics = client.get("/metrics").text
        assert 'visinspect_images_not_kept_total{reason="disk_full"} 1.0' in metrics
        assert client.get(f"/predictions/{made['id']}").status_code == 200  # recorded
        (disk / "filler").unlink()
        assert post(client, photos, "chelsea.png")["image_kept"] is True  # room again


def test_without_a_store_nothing_is_kept(client: TestClient, photos: Path) -> None:
    made = post(client, photos, "coffee.png")
    assert made["image_kept"] is None
    refused = client.get(f"/predictions/{made['id']}/image")
    assert (refused.status_code, refused.json()["error"]["code"]) == (404, "image_not_kept")
    assert "IMAGE_STORE_DIR is not set" in refused.json()["error"]["message"]


def test_cleanup_command_removes_expired_images(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    photos: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = tmp_path / "images"
    with app_on("sqlite", tmp_path_factory, "cleanup", image_store_dir=store) as client:
        old, fresh = post(client, photos, "coffee.png"), post(client, photos, "camera.png")
        then = time.time() - 31 * 86400
        for path in store.glob(f"*/{old['image_sha256']}*"):
            os.utime(path, (then, then))
        monkeypatch.setenv("IMAGE_STORE_DIR", str(store))
        monkeypatch.setenv("IMAGE_RETENTION_DAYS", "30")
        assert cli_main(["images", "cleanup"]) == 0
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (report["expired"], report["evicted"], report["images"]) == (1, 0, 1)
        gone = client.get(f"/predictions/{old['id']}/image")
        assert gone.status_code == 404
        assert "removed by the cleanup" in gone.json()["error"]["message"]
        assert client.get(f"/predictions/{fresh['id']}/image").status_code == 200


def test_cleanup_command_without_a_store_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("IMAGE_STORE_DIR", raising=False)
    assert cli_main(["images", "cleanup"]) == 2
    assert "IMAGE_STORE_DIR is not set" in capsys.readouterr().err


def test_a_kept_upload_counts_against_its_keys_share(
    tmp_path_factory: pytest.TempPathFactory, photos: Path
) -> None:
    """The store knows which key brought an image (its share, IMAGE_STORE_KEY_SHARE): a key
    over its share has its uploads classified and recorded, not kept, and others' still are."""
    store = tmp_path_factory.mktemp("shares") / "images"
    keys = "line-3@predict+read:device-key-012345, alice:alices-key-0123456"
    # Half the store holds coffee and chelsea with their thumbnails, and no third photo.
    two = sum((photos / name).stat().st_size for name in ("coffee.png", "chelsea.png"))
    with app_on(
        "sqlite",
        tmp_path_factory,
        "shares",
        image_store_dir=store,
        api_keys=keys,
        image_store_max_bytes=2 * (two + (64 << 10)),
        image_store_key_share=0.5,
    ) as client:
        device, alice = {"X-API-Key": "device-key-012345"}, {"X-API-Key": "alices-key-0123456"}
        kept = []
        for name in ("coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg"):
            data = (photos / name).read_bytes()
            answer = client.post("/predict", files={"file": (name, data)}, headers=device)
            assert answer.status_code == 200, answer.text
            kept.append(answer.json()["image_kept"])
        assert kept == [True, True, False, False]  # line-3 reached its half of the store
        owners = {p.name.split(".by.")[1] for p in store.rglob("*.by.*")}
        assert owners == {"line-3"}
        answer = client.post(
            "/predict",
            files={"file": ("camera.png", (photos / "camera.png").read_bytes())},
            headers=alice,
        )
        assert answer.json()["image_kept"] is True  # another key's share is untouched
        assert {p.name.split(".by.")[1] for p in store.rglob("*.by.*")} == {"line-3", "alice"}
