"""Heads and label sets under attack and under races: artifacts that cannot be read are skipped
(never a failed start, refresh or promotion), lifecycle changes decided on statuses that another
change altered meanwhile are refused (409) instead of half made, and class additions made at the
same moment all land. Real databases; the races on PostgreSQL with real concurrent transactions."""

from __future__ import annotations

import asyncio
import io
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import numpy as np
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from tests.support import fresh_postgres_database, make_settings, running_app
from visinspect.db import teaching
from visinspect.db.schema import upgrade_to_head
from visinspect.db.session import Database
from visinspect.db.tables import HeadEventRecord, HeadRecord, LabelSetRecord
from visinspect.errors import HeadChangedMeanwhile, InvalidHeadChange
from visinspect.inference.heads import pack
from visinspect.services.heads import HeadRegistry, HeadService
from visinspect.services.labels import LabelService

pytestmark = pytest.mark.anyio

MODEL = "efficientnet_lite0-test"
CLASSES = ["ok", "scratch"]


def artifact(classes: int = 2, width: int = 1280) -> bytes:
    generator = np.random.default_rng(7)
    weights = generator.normal(size=(classes, width)).astype(np.float32)
    return pack(weights, np.zeros(classes), np.full(classes, 0.9))


def _bad_crc(good: bytes) -> bytes:
    """The weights member's bytes changed after it was written: the zip's CRC no longer fits."""
    broken = bytearray(good)
    start = good.index(b"weights.npy") + 200
    broken[start : start + 8] = b"\xff" * 8
    return bytes(broken)


def _zip_of(**members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


GOOD = artifact()
BROKEN = {
    "truncated zip": GOOD[: len(GOOD) // 2],  # BadZipFile: no central directory
    "bad crc": _bad_crc(GOOD),
    "not a zip": b"PK\x03\x04" + b"\x00" * 64,
    "text weights": _zip_of(
        **{
            "features.npy": _npy(np.array("signed_sqrt_l2")),
            "weights.npy": _npy(np.array([["a"] * 1280] * 2)),
            "bias.npy": _npy(np.zeros(2)),
            "thresholds.npy": _npy(np.zeros(2)),
        }
    ),
    "nan weights": pack(np.full((2, 1280), np.nan), np.zeros(2), np.zeros(2)),
}


def head_row(label_set_id: int, version: int, status: str, data: bytes = GOOD) -> HeadRecord:
    import hashlib

    return HeadRecord(
        label_set_id=label_set_id,
        version=version,
        status=status,
        classes=CLASSES,
        base_model_version=MODEL,
        artifact=data,  # its digest recorded correctly: only its content is wrong
        artifact_sha256=hashlib.sha256(data).hexdigest(),
        manifest={},
        labels_until=0,
        trained_at=datetime.now(UTC),
        trained_by=None,
    )


def add_set(session: Session, name: str = "boards") -> int:
    record = LabelSetRecord(name=name, classes=list(CLASSES), created_at=datetime.now(UTC))
    session.add(record)
    session.flush()
    return record.id


def add_event(session: Session, head: HeadRecord, action: str = "train") -> None:
    session.add(
        HeadEventRecord(
            head_id=head.id,
            label_set_id=head.label_set_id,
            action=action,
            from_status=None,
            to_status=head.status,
            replaced_head_id=None,
            actor=None,
            created_at=datetime.now(UTC),
        )
    )
    session.flush()


@pytest.mark.parametrize("kind", sorted(BROKEN))
async def test_an_artifact_that_cannot_be_read_is_skipped(database: Database, kind: str) -> None:
    """A corrupt zip with its sha256 recorded raised BadZipFile out of every refresh (a log line
    every HEADS_REFRESH_S, no promotion reaching any process, a failed start)."""

    def add(session: Session) -> None:
        set_id = add_set(session)
        good = head_row(set_id, 1, "shadow")
        broken = head_row(set_id, 2, "active", BROKEN[kind])
        session.add_all([good, broken])
        session.flush()
        add_event(session, broken)

    await database.run(add)
    failures: list[str] = []
    registry = HeadRegistry(database, MODEL, on_failure=failures.append)
    assert await registry.refresh()
    assert [h.version for h in registry.heads] == [1]  # the readable one serves
    assert failures == ["broken_artifact"]


def test_a_broken_active_head_neither_stops_a_start_nor_a_promotion(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'heads.db'}"
    engine = create_engine(url)
    upgrade_to_head(engine)
    with Session(engine) as session, session.begin():
        set_id = add_set(session)
        broken = head_row(set_id, 1, "active", BROKEN["bad crc"])
        candidate = head_row(set_id, 2, "candidate")
        session.add_all([broken, candidate])
        session.flush()
        add_event(session, broken)
        candidate_id = candidate.id
    engine.dispose()
    settings = make_settings(url, heads_refresh_s=0.2)
    with running_app(settings) as client:  # the start used to fail here
        assert client.get("/health").status_code == 200
        heads = client.app.state.services.heads  # type: ignore[attr-defined]
        heads.registry.model_version = MODEL  # the rows name a test model
        promoted = client.post(f"/heads/{candidate_id}/promote")
        assert promoted.status_code == 200, promoted.text  # was a 500 after committing
        assert promoted.json()["status"] == "active"


# --- races, on PostgreSQL ------------------------------------------------------------------------


@pytest.fixture
def racing() -> Iterator[tuple[Database, list[int]]]:
    """A fresh PostgreSQL database, a set with an active v1 and candidates v2..v4, and a
    `Database` with connections enough for every request at once."""
    with fresh_postgres_database() as url:
        engine = create_engine(url, pool_size=12)
        upgrade_to_head(engine)
        with Session(engine) as session, session.begin():
            set_id = add_set(session)
            rows = [head_row(set_id, 1, "active")] + [
                head_row(set_id, v, "candidate") for v in (2, 3, 4)
            ]
            session.add_all(rows)
            session.flush()
            add_event(session, rows[0], "promote")
            ids = [r.id for r in rows]
        database = Database(engine, 12)
        try:
            yield database, ids
        finally:
            engine.dispose()


def service(database: Database) -> HeadService:
    return HeadService(
        database,
        LabelService(database),
        HeadRegistry(database, MODEL),
        train_timeout_s=60,
        compare_min_labels=5,
    )


def replay(database: Database) -> tuple[dict[int, str], list[HeadEventRecord]]:
    with Session(database.engine) as session:
        heads = {h.id: h.status for h in session.scalars(select(HeadRecord))}
        events = list(session.scalars(select(HeadEventRecord).order_by(HeadEventRecord.id)))
    return heads, events


@pytest.mark.postgres
async def test_concurrent_lifecycle_changes_take_turns_or_are_refused(
    racing: tuple[Database, list[int]],
) -> None:
    """Concurrent promotions answered 500 (the one-active index), 200 for promotions that did not
    stick, and wrote impossible audit events (a head retired twice). Now each change is made
    whole on the statuses it was decided on, or refused with 409 and nothing changed."""
    database, ids = racing
    heads = service(database)
    for _round in range(6):
        outcomes: list[str] = []

        async def attempt(action: str, head_id: int, outcomes: list[str] = outcomes) -> None:
            try:
                await getattr(heads, action)(head_id, "racer")
                outcomes.append("ok")
            except HeadChangedMeanwhile:
                outcomes.append("409")
            except InvalidHeadChange:
                outcomes.append("422")

        async with anyio.create_task_group() as group:
            for head_id in ids[1:] * 2:
                group.start_soon(attempt, "promote", head_id)
            group.start_soon(attempt, "retire", ids[0])
        assert "ok" in outcomes
        assert set(outcomes) <= {"ok", "409", "422"}
        statuses, events = replay(database)
        assert list(statuses.values()).count("active") <= 1
        # The audit trail replays to the statuses: every event starts where the last one left.
        replayed: dict[int, str | None] = {ids[0]: None} | dict.fromkeys(ids[1:], "candidate")
        for event in events:
            if event.from_status is not None:
                assert replayed[event.head_id] == event.from_status, event.id
            replayed[event.head_id] = event.to_status
        assert replayed == statuses


@pytest.mark.postgres
async def test_concurrent_class_additions_all_land(racing: tuple[Database, list[int]]) -> None:
    """Two additions at once both answered 200 and one class was lost (10 of 20 rounds)."""
    database, _ = racing
    labels = LabelService(database)
    added = [f"defect-{n}" for n in range(10)]
    async with anyio.create_task_group() as group:
        for name in added:
            group.start_soon(labels.add_classes, "boards", [name])
    stored = (await labels.get("boards")).record.classes
    assert stored[:2] == CLASSES  # the first ones keep their places
    assert sorted(stored[2:]) == sorted(added)


# --- quality -------------------------------------------------------------------------------------


def reference_quality(
    pairs: list[tuple[str, str, bool]], classes: list[str]
) -> tuple[int, int, float | None, int, int]:
    """(labels, correct, macro-F1, decided, decided correct), written the plain way."""
    if not pairs:
        return 0, 0, None, 0, 0
    scores = []
    for c in classes:
        tp = sum(t == c and a == c for t, a, _ in pairs)
        fp = sum(t != c and a == c for t, a, _ in pairs)
        fn = sum(t == c and a != c for t, a, _ in pairs)
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    decided = [(t, a) for t, a, d in pairs if d]
    return (
        len(pairs),
        sum(t == a for t, a, _ in pairs),
        sum(scores) / len(scores) if scores else None,
        len(decided),
        sum(t == a for t, a in decided),
    )


async def test_quality_is_counted_by_the_database_and_computed_off_the_event_loop(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quality was computed in pure Python on the event loop (classes x labels per version: a
    1,000-class set with 20,000 answers stalled /health/live for 3.3 s, four at once 17 s).
    Now the database counts (truth, answer) pairs, and the arithmetic on those counts runs in a
    worker thread; the figures are those of the plain definition."""
    from visinspect.db.tables import HeadAnswerRecord, LabelRecord
    from visinspect.services import heads as heads_module

    classes = ["ok", "scratch", "stain", "dent"]
    generator = np.random.default_rng(3)
    now = datetime.now(UTC)
    expected: dict[int, list[tuple[str, str, bool]]] = {}

    def add(session: Session) -> tuple[int, int]:
        set_id = add_set(session)
        session.get(LabelSetRecord, set_id).classes = [*classes, "late"]  # type: ignore[union-attr]
        active = head_row(set_id, 1, "active")
        active.classes = classes
        shadow = head_row(set_id, 2, "shadow")
        shadow.classes = classes
        session.add_all([active, shadow])
        session.flush()
        expected[active.id], expected[shadow.id] = [], []
        for prediction_id in range(1, 121):
            truths = list(generator.choice([*classes, "late"], size=2))  # relabelled once
            for truth in truths:
                session.add(
                    LabelRecord(
                        label_set_id=set_id,
                        prediction_id=prediction_id,
                        class_name=truth,
                        created_at=now,
                    )
                )
            session.flush()
            if prediction_id == 40:  # the shadow was trained here: it is judged on what follows
                shadow.labels_until = teaching.latest_label_id(session, set_id)
            for head in (active, shadow):
                right = generator.random() < (0.7 if head is active else 0.8)
                answer = (
                    truths[-1]
                    if right and truths[-1] in classes
                    else str(generator.choice(classes))
                )
                decided = bool(generator.random() < 0.5)
                session.add(
                    HeadAnswerRecord(
                        prediction_id=prediction_id,
                        head_id=head.id,
                        label_set_id=set_id,
                        class_name=answer,
                        confidence=0.5,
                        decided=decided,
                        shadow=head is shadow,
                        created_at=now,
                    )
                )
                if head is active or prediction_id > 40:
                    expected[head.id].append((truths[-1], answer, decided))
        session.flush()
        return active.id, shadow.id

    active_id, shadow_id = await database.run(add)
    places: list[str] = []
    original = heads_module._qualities

    def spy(*args: object) -> object:
        try:
            asyncio.get_running_loop()
            places.append("event loop")
        except RuntimeError:
            places.append("worker thread")
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(heads_module, "_qualities", spy)
    measured = {q.head.id: q for q in await service(database).quality("boards")}
    assert places == ["worker thread"]
    for head_id in (active_id, shadow_id):
        q = measured[head_id]
        labels, correct, macro_f1, decided, decided_correct = reference_quality(
            expected[head_id], classes
        )
        assert (q.labels, q.correct, q.decided, q.decided_correct) == (
            labels,
            correct,
            decided,
            decided_correct,
        )
        assert q.macro_f1 == pytest.approx(macro_f1)
    # The shadow against the active head on the labels both were judged on (after the shadow).
    shared = expected[shadow_id]
    theirs = expected[active_id][-len(shared) :]
    mine_right = sum(t == a for t, a, _ in shared)
    theirs_right = sum(t == a for t, a, _ in theirs)
    assert measured[shadow_id].beats_active == (mine_right > theirs_right)
    assert measured[active_id].beats_active is None
