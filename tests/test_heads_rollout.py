"""A promotion reaches every process within seconds, under load, with no failed request: a real
`visinspect serve` with two server processes on PostgreSQL, clients classifying all along, a
head promoted and then retired through HTTP. Each process learns of a change only from the
database (HEADS_REFRESH_S), so a process that missed it would answer without (or with) the head
about half of the time."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.test_teaching import OBJECTS, TEXTURES
from tests.support import fresh_postgres_database, serving
from visinspect.offline.photos import crops

pytestmark = pytest.mark.slow

REFRESH_S = 1.0
REACH_S = 5.0  # the promise: every process within this


class Load:
    """Clients posting photos until stopped; each answer with when it was asked."""

    def __init__(self, base: str, image: bytes, clients: int = 3, field: str = "heads") -> None:
        self.base, self.image, self.field = base, image, field
        # (asked at, status, heads, answered at), appended whole: one append per answer.
        self.answers: list[tuple[float, int, list[dict[str, Any]], float]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self.stop.is_set():
                asked = time.monotonic()
                response = client.post("/predict", files={"file": ("x.png", self.image)})
                heads = response.json().get(self.field) if response.status_code == 200 else None
                heads = heads or []
                self.answers.append((asked, response.status_code, heads, time.monotonic()))

    def since(self, moment: float) -> list[tuple[float, int, list[dict[str, Any]], float]]:
        return [a for a in self.answers if a[0] >= moment]


def test_promotion_and_retirement_reach_both_processes_under_load(
    tmp_path: Path, photos: Path
) -> None:
    with (
        fresh_postgres_database() as url,
        serving(
            url,
            tmp_path / "server.log",
            WORKERS="2",
            HEADS_REFRESH_S=str(REFRESH_S),
            HEADS_DIR=str(tmp_path / "heads"),
        ) as (_, base),
        httpx.Client(base_url=base, timeout=120) as client,
    ):
        made = client.post(
            "/label-sets", json={"name": "surfaces", "classes": ["texture", "object"]}
        )
        assert made.status_code == 201, made.text
        for names, class_name in ((TEXTURES, "texture"), (OBJECTS, "object")):
            for name in names:
                for data in crops(photos / name)[:2]:
                    prediction = client.post("/predict", files={"file": ("x.png", data)}).json()
                    labelled = client.post(
                        f"/predictions/{prediction['id']}/labels",
                        json={"label_set": "surfaces", "class": class_name},
                    )
                    assert labelled.status_code == 201, labelled.text
        head = client.post("/label-sets/surfaces/heads")
        assert head.status_code == 201, head.text
        head_id = head.json()["id"]

        with Load(base, crops(photos / "coffee.png")[4]) as load:
            time.sleep(2)  # load running before the change
            promoted_at = time.monotonic()
            assert client.post(f"/heads/{head_id}/promote").status_code == 200
            time.sleep(REACH_S + 3)
            retired_at = time.monotonic()
            assert client.post(f"/heads/{head_id}/retire").status_code == 200
            time.sleep(REACH_S + 3)

    assert {a[1] for a in load.answers} == {200}, "a request failed meanwhile"
    # Asked 5 s after the promotion and answered before the retirement (one answered after it
    # may already be without the head).
    settled = [a for a in load.since(promoted_at + REACH_S) if a[3] < retired_at]
    assert len(settled) >= 20, len(settled)
    assert all([h["version"] for h in a[2]] == [1] for a in settled)
    assert all(a[2] == [] for a in load.since(retired_at + REACH_S))
    # Answered before the promotion (one asked before it but answered after may carry the head).
    before = [a for a in load.answers if a[3] < promoted_at]
    assert before, "the load ran before the promotion"
    assert all(a[2] == [] for a in before)


def test_detector_promotion_and_rollback_reach_both_processes_under_load(tmp_path: Path) -> None:
    """The same for detectors, which share the heads' lifecycle: two versions trained over HTTP
    on kept good shots, v1 promoted, v2 promoted over it, rolled back to v1, under load."""
    from bench.defects import product, shots

    from tests.support import PHOTOS

    coffee = product(PHOTOS / "coffee.png")
    with (
        fresh_postgres_database() as url,
        serving(
            url,
            tmp_path / "server.log",
            WORKERS="2",
            HEADS_REFRESH_S=str(REFRESH_S),
            HEADS_DIR=str(tmp_path / "heads"),
            IMAGE_STORE_DIR=str(tmp_path / "images"),
        ) as (_, base),
        httpx.Client(base_url=base, timeout=120) as client,
    ):
        made = client.post("/label-sets", json={"name": "line", "classes": ["ok", "defect"]})
        assert made.status_code == 201, made.text
        for shot in shots(coffee, "good", 8, seed=90):
            prediction = client.post("/predict", files={"file": ("x.jpg", shot.jpeg)}).json()
            labelled = client.post(
                f"/predictions/{prediction['id']}/labels", json={"label_set": "line", "class": "ok"}
            )
            assert labelled.status_code == 201, labelled.text
        ids = []
        for _ in range(2):
            trained = client.post("/label-sets/line/detectors", json={"good_class": "ok"})
            assert trained.status_code == 201, trained.text
            ids.append(trained.json()["id"])

        changes: list[tuple[float, int]] = []  # when, and the version answering from then on
        with Load(base, next(shots(coffee, "good", 1, seed=91)).jpeg, field="anomalies") as load:
            time.sleep(2)
            for head_id, action, version in ((ids[0], "promote", 1), (ids[1], "promote", 2)):
                changes.append((time.monotonic(), version))
                assert client.post(f"/heads/{head_id}/{action}").status_code == 200
                time.sleep(REACH_S + 3)
            changes.append((time.monotonic(), 1))
            assert client.post(f"/heads/{ids[1]}/rollback").status_code == 200
            time.sleep(REACH_S + 3)
            ended = time.monotonic()

    assert {a[1] for a in load.answers} == {200}, "a request failed meanwhile"
    assert all(a[2] == [] for a in load.answers if a[3] < changes[0][0])
    for (since, version), (until, _) in zip(changes, [*changes[1:], (ended, 0)], strict=True):
        settled = [a for a in load.since(since + REACH_S) if a[3] < until]
        assert len(settled) >= 10, (version, len(settled))
        assert all([d["version"] for d in a[2]] == [version] for a in settled), version
