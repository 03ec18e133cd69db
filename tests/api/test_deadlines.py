"""X-Request-Timeout-Ms through the real app: validated, honoured, and a deadline the waiting
work outlasts answered 503 `deadline_unreachable` at once, with Retry-After and no row."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.support import (
    count_rows,
    gated_model,
    make_settings,
    running_app,
    services_of,
    wait_until,
)


@pytest.mark.parametrize("value", ["soon", "0", "-5", "3600001"])
def test_an_invalid_deadline_header_is_refused(
    sqlite_client: TestClient, photos: Path, value: str
) -> None:
    response = sqlite_client.post(
        "/predict",
        files={"file": ("c.png", (photos / "coffee.png").read_bytes())},
        headers={"X-Request-Timeout-Ms": value},
    )
    assert response.status_code == 422, response.text
    assert "X-Request-Timeout-Ms" in response.text


def test_a_deadline_the_waiting_work_outlasts_is_answered_503_at_once(
    photos: Path, tmp_path: Path
) -> None:
    photo = (photos / "coffee.png").read_bytes()
    settings = make_settings(f"sqlite:///{tmp_path / 'd.db'}")
    with running_app(settings) as client:
        ok = client.post("/predict", files={"file": ("c.png", photo)})
        assert ok.status_code == 200  # the batcher learns the model's time per image
        services = services_of(client)
        with gated_model(services.classifier) as gate:
            answers: list[int] = []
            workers = [
                threading.Thread(
                    target=lambda: answers.append(
                        client.post("/predict", files={"file": ("c.png", photo)}).status_code
                    )
                )
                for _ in range(4)
            ]
            for worker in workers:
                worker.start()
            wait_until(
                lambda: gate.entered.is_set() and services.batcher.images_ahead == 4,
                what="four images in or behind the held pass",
            )
            started = time.perf_counter()
            hurried = client.post(
                "/predict",
                files={"file": ("c.png", photo)},
                headers={"X-Request-Timeout-Ms": "1"},
            )
            assert time.perf_counter() - started < 1
            gate.release.set()
            for worker in workers:
                worker.join(timeout=60)
        assert hurried.status_code == 503, hurried.text
        assert hurried.json()["error"]["code"] == "deadline_unreachable"
        assert int(hurried.headers["retry-after"]) >= 1
        assert answers == [200] * 4
        patient = client.post(
            "/predict",
            files={"file": ("c.png", photo)},
            headers={"X-Request-Timeout-Ms": "20000"},
        )
        assert patient.status_code == 200
        assert count_rows(client) == 1 + 4 + 1  # none for the refused one
