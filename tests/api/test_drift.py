"""GET /predictions/drift over HTTP: its answer, its refusals, and the gauges it sets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from tests.support import make_settings, running_app, services_of, synthetic_record, wait_until


def test_drift_answers_refuses_bad_windows_and_sets_the_gauges(
    tmp_path: Path, photos: Path
) -> None:
    with running_app(make_settings(f"sqlite:///{tmp_path / 'drift.db'}")) as client:
        for name in ("coffee.png", "camera.png"):
            assert (
                client.post(
                    "/predict", files={"file": (name, (photos / name).read_bytes())}
                ).status_code
                == 200
            )
        answer = client.get("/predictions/drift")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["recent_count"], body["reference_count"], body["drifted"]) == (2, 0, None)
        assert body["reason"].startswith("not enough predictions")
        assert "visinspect_drift_detected -1.0" in client.get("/metrics").text
        earlier = client.get(
            "/predictions/drift",
            params={"window": "90m", "reference": "2d", "until": "2026-01-01T00:00:00Z"},
        ).json()
        assert (earlier["recent_count"], earlier["recent_end"]) == (0, "2026-01-01T00:00:00Z")
        assert earlier["reference_start"] == "2025-12-29T22:30:00Z"  # 90 min, then 2 days, before
        for bad in ({"window": "1w"}, {"reference": "0d"}, {"window": "5000d"}):
            refused = client.get("/predictions/drift", params=bad)
            assert refused.status_code == 422
            assert refused.json()["error"]["code"] == "invalid_request"
        for until in (
            "0001-01-01T00:00:00+01:00",
            "0001-01-02T00:00:00Z",
            "9999-12-31T23:00:00-05:00",
        ):
            refused = client.get("/predictions/drift", params={"until": until})
            assert refused.status_code == 422, refused.text
            assert refused.json()["error"]["code"] == "invalid_time_range"


def test_the_watch_fills_the_gauges_without_a_request(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'watch.db'}", drift_interval_s=0.05)
    with running_app(settings) as client:
        wait_until(
            lambda: "visinspect_drift_detected -1.0" in client.get("/metrics").text,
            10,
            "the drift watch",
        )


def test_drift_over_http_names_the_classes_that_moved(tmp_path: Path) -> None:
    until = datetime(2026, 6, 1, tzinfo=UTC)
    with running_app(make_settings(f"sqlite:///{tmp_path / 'moved.db'}")) as client:
        engine = services_of(client).history.database.engine
        with Session(engine) as session:
            session.add_all(
                [
                    synthetic_record(
                        f"ref-{i}",
                        "espresso",
                        created_at=until - timedelta(days=1, hours=2 * i + 1),
                    )
                    for i in range(60)
                ]
                + [
                    synthetic_record(
                        f"now-{i}", "tabby", created_at=until - timedelta(minutes=10 * i + 5)
                    )
                    for i in range(60)
                ]
            )
            session.commit()
        body = client.get("/predictions/drift", params={"until": until.isoformat()}).json()
    assert (body["recent_count"], body["reference_count"], body["drifted"]) == (60, 60, True)
    assert body["class_js_distance"] == pytest.approx(1.0)
    assert body["moved"][0] == {
        "class_name": "espresso",
        "recent_share": 0.0,
        "reference_share": 1.0,
        "change": -1.0,
    }
    assert body["moved"][1]["class_name"] == "tabby"
    assert body["moved"][1]["change"] == 1.0
