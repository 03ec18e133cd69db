"""Group commits: every caller gets its own committed row; a bad row fails only its own caller."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, func, inspect, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tests.support import fresh_postgres_database, synthetic_record
from visinspect.db import repository
from visinspect.db.schema import upgrade_to_head
from visinspect.db.session import Database
from visinspect.db.tables import EmbeddingRecord, PredictionRecord
from visinspect.db.writer import PredictionWriter
from visinspect.errors import RecordNotStored


@pytest.fixture
def committed_database() -> Iterator[Database]:
    """A fresh database whose commits are real: the writer's groups run on several connections."""
    from sqlalchemy import create_engine

    with fresh_postgres_database() as url:
        engine = create_engine(url)
        upgrade_to_head(engine)
        yield Database(engine, max_concurrency=4)
        engine.dispose()


def count(database: Database) -> int:
    with database.sessions() as session:
        return int(session.scalar(select(func.count(PredictionRecord.id))) or 0)


@pytest.mark.anyio
async def test_concurrent_stores_each_get_their_committed_row(committed_database: Database) -> None:
    writer = PredictionWriter(committed_database)
    writer.start()
    try:
        stored = await asyncio.gather(*(writer.store(synthetic_record(f"r{i}")) for i in range(50)))
    finally:
        await writer.close()
    assert len({r.id for r in stored}) == 50
    assert count(committed_database) == 50


@pytest.mark.anyio
async def test_a_bad_row_fails_alone(committed_database: Database) -> None:
    writer = PredictionWriter(committed_database)
    writer.start()
    too_long = "x" * 500  # class_name is VARCHAR(128): PostgreSQL refuses the row
    try:
        results = await asyncio.gather(
            writer.store(synthetic_record("a")),
            writer.store(synthetic_record("bad", class_name=too_long)),
            writer.store(synthetic_record("b")),
            return_exceptions=True,
        )
    finally:
        await writer.close()
    assert isinstance(results[1], RecordNotStored)  # a 500: retrying cannot help
    assert results[1].__cause__ is not None  # the driver's error, for the log line
    assert all(isinstance(r, PredictionRecord) for r in (results[0], results[2]))
    assert count(committed_database) == 2


def test_a_group_is_stored_as_given_on_both_backends(empty_engine: Engine) -> None:
    """PostgreSQL inserts a group through arrays (`repository.add_predictions`), SQLite through
    the ORM's bulk insert: both store every column as given, and number the rows in order."""
    upgrade_to_head(empty_engine)
    paris = timezone(timedelta(hours=1))
    full = synthetic_record("full", class_name="café ☕", confidence=0.123456789012345)
    full.created_at = datetime(2026, 12, 1, 23, 30, 0, 123456, tzinfo=paris)  # 22:30 UTC
    full.predictions = [{"class_id": 967, "class_name": "café ☕", "confidence": 0.5}, {"k": None}]
    full.filename, full.decode_ms, full.inference_ms, full.image_kept = "ünï.jpg", 1.5, 2.5, False
    bare = synthetic_record("bare")  # filename, decode_ms, inference_ms, image_kept: None
    records = [full, bare, synthetic_record("third")]
    # Kept embeddings go in as one joined value on PostgreSQL: lengths that differ, a zero byte,
    # a row without one.
    kept = [_kept(b"\x00\xff\x10", full), None, _kept(bytes(range(256)) * 5, records[2])]
    with Session(empty_engine) as session:
        repository.add_predictions(session, records, kept)
        session.commit()
    assert [r.id for r in records] == sorted(r.id for r in records)
    columns = [a.key for a in inspect(PredictionRecord).column_attrs]
    with Session(empty_engine) as session:
        for given in records:
            stored = session.get(PredictionRecord, given.id)
            assert stored is not None
            assert {c: getattr(stored, c) for c in columns} == {
                c: getattr(given, c) for c in columns
            }
    assert full.created_at.astimezone(UTC).hour == 22
    with Session(empty_engine) as session:
        rows = session.execute(select(EmbeddingRecord.prediction_id, EmbeddingRecord.codes))
        stored_codes = {row.prediction_id: row.codes for row in rows}
    assert stored_codes == {full.id: b"\x00\xff\x10", records[2].id: bytes(range(256)) * 5}


def _kept(codes: bytes, record: PredictionRecord) -> EmbeddingRecord:
    return EmbeddingRecord(
        created_at=record.created_at, model_version="sha256:0", low=-1.0, scale=0.5, codes=codes
    )


def test_a_value_too_long_is_refused_not_cut(committed_database: Database) -> None:
    """PostgreSQL's arrays are of text: a cast to VARCHAR(128) would cut the value silently."""
    with committed_database.sessions() as session, pytest.raises(DBAPIError, match="too long"):
        repository.add_predictions(session, [synthetic_record("long", class_name="x" * 129)])


def test_a_group_is_one_statement_outside_a_transaction(committed_database: Database) -> None:
    """PostgreSQL: once its day's partition is known, a group (predictions and their kept
    embeddings) is one statement sent in autocommit: no BEGIN, no COMMIT, one round trip. Each
    round trip cost about 0.7 ms of waiting with every core busy (docs/benchmarks.md)."""
    from sqlalchemy import event

    with committed_database.sessions.begin() as session:  # the day's partition becomes known
        repository.add_predictions(session, [synthetic_record("first")])
    sent: list[tuple[str, bool]] = []

    def record(_conn: object, cursor: object, statement: str, *_: object) -> None:
        sent.append((statement, cursor.connection.autocommit))  # type: ignore[attr-defined]

    engine = committed_database.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        records = [synthetic_record("a"), synthetic_record("b")]
        with committed_database.sessions.begin() as session:
            repository.add_predictions(session, records, [_kept(b"\x01\x02", records[0]), None])
            event.remove(engine, "before_cursor_execute", record)
            assert count(committed_database) == 3  # visible from another connection already
    finally:
        if event.contains(engine, "before_cursor_execute", record):
            event.remove(engine, "before_cursor_execute", record)
    assert len(sent) == 1, [s for s, _ in sent]
    assert sent[0][1] is True
    with committed_database.sessions() as session:
        kept = session.scalar(select(EmbeddingRecord.prediction_id))
    assert kept == records[0].id
