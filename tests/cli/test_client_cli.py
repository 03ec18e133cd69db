"""The Python client and `visinspect classify`, against a real server process and in-process."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from visinspect.client import Client, ServiceError

pytestmark = pytest.mark.slow
VISINSPECT = str(Path(sys.executable).parent / "visinspect")


def test_client_round_trip(server: tuple[object, str, str], photos: Path) -> None:
    _, base, _ = server
    with Client(base) as client:
        assert client.health().status == "ready"
        coffee = client.predict(photos / "coffee.png", top_k=2)
        assert coffee.predictions[0].class_name == "espresso"
        assert len(coffee.predictions) == 2
        assert client.prediction(coffee.id) == coffee
        batch = client.predict_batch([photos / "camera.png", b"not an image"])
        assert (batch.succeeded, batch.failed) == (1, 1)
        assert batch.items[1].error is not None
        assert batch.items[1].error.code == "not_an_image"
        page = client.predictions(class_name="espresso")
        assert [p.id for p in page.items] == [coffee.id]
        assert client.stats().total == 2
        with pytest.raises(ServiceError) as refused:
            client.predict(b"")
        assert (refused.value.status, refused.value.code) == (400, "empty_file")
        # The server fixture keeps images: the upload comes back as it was sent.
        assert coffee.image_kept is True
        assert client.image(coffee.id) == (photos / "coffee.png").read_bytes()
        assert client.image(coffee.id, thumbnail=True).startswith(b"\xff\xd8")  # a JPEG
        with pytest.raises(ServiceError) as missing:
            client.image(10**9)
        assert (missing.value.status, missing.value.code) == (404, "prediction_not_found")


def test_client_and_cli_review_quality_and_drift(
    server: tuple[object, str, str], photos: Path
) -> None:
    _, base, _ = server
    with Client(base) as client:
        coffee = client.predict(photos / "coffee.png")
        camera = client.predict(photos / "camera.png")
        queue = client.predictions(reviewed=False)
        assert {p.id for p in queue.items} == {coffee.id, camera.id}
        review = client.review(coffee.id, "wrong", true_class_id=968, note="an empty cup")
        assert (review.true_class_name, review.reviewer) == ("cup", None)
        with pytest.raises(ServiceError) as refused:
            client.review(camera.id, "wrong")
        assert (refused.value.status, refused.value.code) == (422, "invalid_review")
    recorded = _visinspect("review", str(camera.id), "correct", "--url", base)
    assert recorded.returncode == 0, recorded.stderr
    assert json.loads(recorded.stdout)["verdict"] == "correct"
    missing = _visinspect("review", "999999", "correct", "--url", base)
    assert (missing.returncode, "prediction_not_found" in missing.stderr) == (1, True)
    quality = _visinspect("quality", "--url", base, "--format", "json")
    assert quality.returncode == 0, quality.stderr
    assert json.loads(quality.stdout)["overall"] == {"reviewed": 2, "correct": 1, "accuracy": 0.5}
    table = _visinspect("quality", "--url", base)
    assert "espresso" in table.stdout
    assert "cup" in table.stdout
    assert _visinspect("quality", "--url", "http://127.0.0.1:9").returncode == 3
    with Client(base) as client:
        assert client.drift(window="1h", reference="1d").recent_count == 2
    drifted = _visinspect("drift", "--url", base, "--format", "json")
    assert drifted.returncode == 0, drifted.stderr
    assert json.loads(drifted.stdout)["drifted"] is None  # two predictions: too few to say
    assert "no verdict" in _visinspect("drift", "--url", base).stdout


def _visinspect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VISINSPECT, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.mark.parametrize(
    "module", ["visinspect.client", "visinspect.cli.classify", "visinspect.cli.review"]
)
def test_talking_to_a_server_imports_no_server_side_package(module: str) -> None:
    """A user's script, or `visinspect classify --url`, that only talks to a server needs neither
    the ORM, the web framework nor the model runtime (a fresh interpreter each time)."""
    probe = (
        f"import sys; import {module}; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'sqlalchemy', 'fastapi', 'starlette', 'torch', 'onnxruntime', 'alembic'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def _classify(*args: str, database_url: str = "sqlite://") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VISINSPECT, "classify", "--no-progress", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "PATH": "/usr/bin:/bin",
            "LOG_LEVEL": "WARNING",
            "DATABASE_URL": database_url,
            "MODEL_DIR": os.environ["MODEL_DIR"],
        },
    )


def test_cli_against_a_server(
    server: tuple[object, str, str],
    photos: Path,
    tmp_path: Path,
) -> None:
    _, base, _ = server
    folder = tmp_path / "inbox"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(photos / "coffee.png", folder / "coffee.png")
    shutil.copy(photos / "camera.png", folder / "nested" / "camera.png")
    result = _classify(str(folder), "--url", base, "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert {Path(line["path"]).name: line["predictions"][0]["class_name"] for line in lines} == {
        "coffee.png": "espresso",
        "camera.png": "tripod",
    }
    assert all(line["record_id"] for line in lines)  # stored by the server

    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    partial = _classify(str(folder / "*.jpg"), str(folder / "coffee.png"), "--url", base)
    assert partial.returncode == 1
    assert "corrupt_image" in partial.stdout


def test_cli_in_process_records_like_the_server(photos: Path, tmp_path: Path) -> None:
    """No --url: the same start-up and PredictService in this process; rows in DATABASE_URL."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    result = _classify(
        str(photos / "coffee.png"), "--format", "csv", "--top-k", "2", database_url=url
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["rank"], r["class_name"]) for r in rows] == [("1", "espresso"), ("2", "cup")]
    assert {r["record_id"] for r in rows} == {"1"}
    again = _classify(str(photos / "camera.png"), "--format", "jsonl", database_url=url)
    assert json.loads(again.stdout)["record_id"] == 2
    engine = create_engine(url)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT class_name, request_id FROM predictions")).all()
    engine.dispose()
    assert [name for name, _ in stored] == ["espresso", "tripod"]
    assert all(request_id.startswith("cli-") for _, request_id in stored)


def test_cli_exit_codes(photos: Path, tmp_path: Path) -> None:
    assert _classify(str(tmp_path / "nothing-*.png")).returncode == 2
    assert _classify(str(photos / "coffee.png"), "--url", "http://127.0.0.1:9").returncode == 3
