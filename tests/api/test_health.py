"""Readiness and liveness; a real database outage; the event loop stays free during inference."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.engine import make_url

from tests.support import (
    fresh_postgres_database,
    gated_model,
    make_settings,
    rows_with_request_id,
    running_app,
    services_of,
    set_connections_allowed,
    wait_until,
)
from visinspect.db.schema import alembic_config
from visinspect.services.health import READINESS_CACHE_S


def test_ready_names_every_check(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["failing"] == []
    assert set(body["checks"]) == {"model", "database", "schema"}
    assert body["model_name"] == "efficientnet_lite0"
    assert body["schema_revision"]
    # MODEL_PRECISION=auto (the default) says what it chose, on which CPU, and why.
    assert body["checks"]["model"]["detail"].startswith(f"{body['precision']}")
    assert "measured at build on" in body["checks"]["model"]["detail"]


def test_liveness(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "alive"}


def test_openapi_documents_the_api(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    predict = schema["paths"]["/predict"]["post"]
    for status in ("200", "400", "413", "415", "422", "503"):
        assert status in predict["responses"], status
    assert predict["responses"]["415"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorResponse"
    )
    assert "examples" in schema["components"]["schemas"]["PredictionOut"]
    assert {"/predictions", "/predictions/{prediction_id}", "/health", "/health/live"} <= set(
        schema["paths"]
    )
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    assert "cdn" not in docs.text.lower()  # works offline: every asset is served by the app
    script = client.get("/docs-assets/swagger-ui-bundle.js")
    assert script.status_code == 200
    assert len(script.content) > 100_000


@pytest.fixture
def outage_client() -> Iterator[tuple[TestClient, str]]:
    with fresh_postgres_database() as url, running_app(make_settings(url)) as client:
        yield client, make_url(url).database or ""


def test_database_outage_gives_503_and_recovers_without_restart(
    outage_client: tuple[TestClient, str], photos: Path
) -> None:
    client, database = outage_client
    coffee = (photos / "coffee.png").read_bytes()
    assert client.post("/predict", files={"file": ("c.png", coffee)}).status_code == 200

    set_connections_allowed(database, False)
    try:
        wait_until(lambda: client.get("/health").status_code == 503, 5, "not ready")
        health = client.get("/health")
        assert health.json()["failing"] == ["database", "schema"]
        detail = health.json()["checks"]["database"]["detail"]
        assert "unavailable" in detail
        assert database not in health.text  # the driver's text (host, user, database): log only

        lost_id = uuid.uuid4().hex
        refused = client.post(
            "/predict", files={"file": ("c.png", coffee)}, headers={"X-Request-ID": lost_id}
        )
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "database_unavailable"
        assert refused.headers["retry-after"]
        assert client.get("/predictions").status_code == 503
    finally:
        set_connections_allowed(database, True)

    wait_until(lambda: client.get("/health").status_code == 200, 5, "ready again")
    recovered = client.post("/predict", files={"file": ("c.png", coffee)})
    assert recovered.status_code == 200
    assert rows_with_request_id(client, lost_id) == []  # the 503 stored nothing
    assert len(rows_with_request_id(client, recovered.json()["request_id"])) == 1


def test_a_flood_of_probes_costs_the_database_one_check_a_second(
    outage_client: tuple[TestClient, str],
) -> None:
    """/health needs no key and is never refused: 40 probes at once share one check, and a
    probe within READINESS_CACHE_S of the last check asks nothing."""
    client, _ = outage_client
    engine = services_of(client).history.database.engine
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    time.sleep(READINESS_CACHE_S)
    event.listen(engine, "before_cursor_execute", count)
    try:
        assert client.get("/health").status_code == 200
        per_check = len(statements)
        assert per_check > 0
        probes = [threading.Thread(target=lambda: client.get("/health")) for _ in range(40)]
        for probe in probes:
            probe.start()
        for probe in probes:
            probe.join()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(statements) <= 2 * per_check  # the first check's, and at most one more


def test_schema_behind_head_is_not_ready(tmp_path: Path) -> None:
    from alembic import command

    with running_app(make_settings(f"sqlite:///{tmp_path / 'behind.db'}")) as client:
        config = alembic_config()
        with services_of(
            client
        ).history.database.engine.connect() as conn:  # alembic begins its own transactions
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
            conn.commit()
        body = client.get("/health").json()
        assert body["failing"] == ["schema"]
        assert "code expects" in body["checks"]["schema"]["detail"]


def test_health_answers_while_an_image_is_being_classified(
    sqlite_client: TestClient, photos: Path
) -> None:
    result: dict[str, httpx.Response] = {}

    def classify() -> None:
        result["predict"] = sqlite_client.post(
            "/predict", files={"file": ("c.png", (photos / "coffee.png").read_bytes())}
        )

    worker = threading.Thread(target=classify)
    with gated_model(services_of(sqlite_client).classifier) as gate:
        worker.start()
        assert gate.entered.wait(timeout=30), "the forward pass never started"
        # The forward pass is now parked inside the model thread. If it ran on the event loop,
        # this request could not be answered until the gate opened.
        health = sqlite_client.get("/health")
        live = sqlite_client.get("/health/live")
        assert not gate.release.is_set()
        assert "predict" not in result
        assert health.status_code == 200
        assert live.status_code == 200
    worker.join(timeout=60)
    assert result["predict"].status_code == 200
    assert result["predict"].json()["predictions"][0]["class_name"] == "espresso"
