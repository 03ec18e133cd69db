"""DriftService on rows written with known distributions (PostgreSQL and SQLite, inside a
transaction that is rolled back): no drift, drift in classes and confidences, too few rows; the
statistics equal SciPy's on the same data; the watch sets the gauges and logs verdict changes."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp, kstwobign
from sqlalchemy.orm import Session
from structlog.testing import capture_logs

from tests.support import synthetic_record
from visinspect.db import repository
from visinspect.db.session import Database
from visinspect.errors import InvalidRequest
from visinspect.metrics import Metrics
from visinspect.services.drift import (
    DriftService,
    DriftThresholds,
    jensen_shannon_distance,
    kolmogorov_sf,
    parse_duration,
)

pytestmark = pytest.mark.anyio

UNTIL = datetime(2026, 6, 10, 12, tzinfo=UTC)
DAY, WEEK, MINUTE = timedelta(days=1), timedelta(days=7), timedelta(minutes=1)
THRESHOLDS = DriftThresholds(class_js=0.1, confidence_ks=0.1, p_value=0.01, min_predictions=50)
# Confidences between the 0.01 edges (x.xx5): the statistic at the edges is the exact one.
STEADY = [0.105 + 0.1 * (i % 9) for i in range(90)]


def rows(
    prefix: str, classes: list[str], confidences: list[float], start: datetime, span: timedelta
):
    step = span / len(classes)
    return [
        synthetic_record(f"{prefix}-{i}", name, created_at=start + i * step, confidence=c)
        for i, (name, c) in enumerate(zip(classes, confidences, strict=True))
    ]


async def write(database: Database, records: list) -> None:  # type: ignore[type-arg]
    def add(session: Session) -> None:
        repository.add_predictions(session, records)

    await database.run(add)


def reference_rows() -> list:  # type: ignore[type-arg]
    """A week of espresso and cup, half and half, confidences spread over 0.1..0.9."""
    classes = ["espresso", "cup"] * 90
    return rows("ref", classes, STEADY * 2, UNTIL - DAY - WEEK, WEEK)


async def test_the_same_stream_has_not_drifted(database: Database) -> None:
    await write(database, reference_rows())
    await write(database, rows("now", ["cup", "espresso"] * 45, STEADY, UNTIL - DAY, DAY))
    drift = await DriftService(database, THRESHOLDS).compare(DAY, WEEK, UNTIL)
    assert (drift.recent_count, drift.reference_count) == (90, 180)
    assert drift.drifted is False
    assert drift.reason == "within the thresholds"
    assert drift.class_js_distance == pytest.approx(0.0, abs=1e-12)
    assert drift.confidence_ks == pytest.approx(0.0, abs=1e-12)
    assert drift.confidence_p_value == pytest.approx(1.0)
    assert drift.recent_mean_confidence == pytest.approx(np.mean(STEADY))


async def test_a_new_class_and_lower_confidences_are_drift(database: Database) -> None:
    await write(database, reference_rows())
    recent_classes = ["tabby"] * 45 + ["espresso"] * 15
    recent_confidences = [0.305] * 30 + [0.155] * 30
    await write(database, rows("now", recent_classes, recent_confidences, UNTIL - DAY, DAY))
    drift = await DriftService(database, THRESHOLDS).compare(DAY, WEEK, UNTIL)
    assert drift.drifted is True
    assert "classes: Jensen-Shannon" in drift.reason
    assert "confidences: KS statistic" in drift.reason
    # The same statistics as SciPy's on the raw values.
    names = ["cup", "espresso", "tabby"]
    p = [recent_classes.count(n) for n in names]
    q = [90, 90, 0]
    assert drift.class_js_distance == pytest.approx(jensenshannon(p, q, base=2), abs=1e-12)
    exact = ks_2samp(recent_confidences, STEADY * 2)
    assert drift.confidence_ks == pytest.approx(exact.statistic, abs=1e-12)
    effective = 60 * 180 / 240
    assert drift.confidence_p_value == pytest.approx(
        kstwobign.sf(math.sqrt(effective) * exact.statistic), rel=1e-9
    )
    assert [(m.class_name, round(m.change, 4)) for m in drift.moved] == [
        ("tabby", 0.75),
        ("cup", -0.5),
        ("espresso", -0.25),
    ]


async def test_too_few_predictions_give_no_verdict(database: Database) -> None:
    await write(database, reference_rows())
    await write(database, rows("now", ["tabby"] * 10, [0.3] * 10, UNTIL - DAY, DAY))
    drift = await DriftService(database, THRESHOLDS).compare(DAY, WEEK, UNTIL)
    assert (drift.drifted, drift.class_js_distance, drift.moved) == (None, None, [])
    assert "not enough predictions: 10 recent and 180 in the reference" in drift.reason


async def test_the_watch_sets_the_gauges_and_logs_when_the_verdict_changes(
    database: Database,
) -> None:
    metrics = Metrics()
    service = DriftService(database, THRESHOLDS, on_drift=metrics.observe_drift)
    with capture_logs() as logs:
        first = await service.watch(DAY, WEEK)  # nothing stored yet: no verdict
        await service.watch(DAY, WEEK)  # the same verdict: no second line
    assert first.drifted is None
    assert [entry["event"] for entry in logs] == ["drift.changed"]
    assert "visinspect_drift_detected -1.0" in metrics.render().decode()
    # Without `until`, the windows end with the current UTC hour (all rollups, no row read).
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    await write(database, rows("ref", ["espresso"] * 60, [0.905] * 60, now - DAY - WEEK, WEEK))
    await write(
        database, rows("now", ["tabby"] * 60, [0.205] * 60, now - DAY + MINUTE, DAY - 2 * MINUTE)
    )
    with capture_logs() as logs:
        changed = await service.watch(DAY, WEEK)
    assert changed.drifted is True
    assert [(e["event"], e["drifted"], e["log_level"]) for e in logs] == [
        ("drift.changed", True, "warning")
    ]
    text = metrics.render().decode()
    assert "visinspect_drift_detected 1.0" in text
    js = re.search(r"^visinspect_drift_class_js_distance (\S+)$", text, re.MULTILINE)
    assert js is not None
    assert float(js[1]) == pytest.approx(1.0)  # disjoint class sets


def test_the_statistics_match_scipy() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        p, q = (
            rng.integers(0, 50, size=12).astype(float),
            rng.integers(0, 50, size=12).astype(float),
        )
        assert jensen_shannon_distance(p, q) == pytest.approx(
            jensenshannon(p, q, base=2), abs=1e-12
        )
    for x in (0.05, 0.3, 0.7, 0.99, 1.0, 1.5, 2.5, 4.0):
        assert kolmogorov_sf(x) == pytest.approx(kstwobign.sf(x), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(
    ("text", "length"), [("90m", timedelta(minutes=90)), ("24h", DAY), ("7d", WEEK)]
)
def test_durations(text: str, length: timedelta) -> None:
    assert parse_duration(text) == length


@pytest.mark.parametrize("text", ["", "0h", "24", "1w", "-1d", "1001d", "1.5h"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_duration(text)
