"""Rollups equal the rows: for any time range (split on hours and days, checked by hypothesis),
on PostgreSQL and SQLite; and after concurrent group commits, a group retried row by row, rows
inserted outside the service (COPY) and a database outage, the three rollup tables hold exactly
what GROUP BY over the rows gives."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from tests.support import fresh_postgres_database, set_connections_allowed, synthetic_record
from visinspect.db import repository, rollups
from visinspect.db.rollups import HOUR, split_range
from visinspect.db.schema import upgrade_to_head
from visinspect.db.session import Database
from visinspect.db.tables import PredictionRecord
from visinspect.db.writer import PredictionWriter
from visinspect.errors import DatabaseUnavailable, RecordNotStored

START = datetime(2026, 3, 1, 22, 17, tzinfo=UTC)
CLASSES = ["espresso", "tripod", "tabby", "cup", "palace"]
moments = st.datetimes(
    min_value=datetime(2026, 2, 27), max_value=datetime(2026, 3, 6), timezones=st.just(UTC)
)


@given(moments | st.none(), moments | st.none())
@settings(max_examples=400, deadline=None)
def test_a_range_splits_into_contiguous_aligned_pieces(
    after: datetime | None, before: datetime | None
) -> None:
    pieces = split_range(after, before)
    if after is not None and before is not None and after >= before:
        assert pieces == []
        return
    assert pieces[0].start == after
    assert pieces[-1].end == before
    for earlier, later in itertools.pairwise(pieces):
        assert earlier.end == later.start  # no gap, no overlap
    for piece in pieces:
        if piece.grain == "days":
            for edge in (piece.start, piece.end):
                assert edge is None or edge == edge.replace(
                    hour=0, minute=0, second=0, microsecond=0
                )
        if piece.grain == "hours":
            assert piece.start is not None
            assert piece.end is not None
            assert piece.start.minute == piece.start.second == piece.start.microsecond == 0
            assert piece.end.minute == piece.end.second == piece.end.microsecond == 0
            assert piece.end - piece.start < timedelta(days=1)
        if piece.grain == "rows":
            assert piece.start is not None
            assert piece.end is not None
            assert piece.end - piece.start < HOUR  # rows are read for partial hours only
    assert sum(p.grain == "days" for p in pieces) <= 1


def rows_between(
    session: Session, after: datetime | None, before: datetime | None, class_name: str | None
) -> tuple[Counter[str], Counter[date], list[int]]:
    """The same counts straight from the rows."""
    where = []
    if after is not None:
        where.append(PredictionRecord.created_at >= after)
    if before is not None:
        where.append(PredictionRecord.created_at < before)
    records = list(session.scalars(select(PredictionRecord).where(*where)))
    chosen = [r for r in records if class_name is None or r.class_name == class_name]
    buckets = [0] * rollups.BUCKETS
    for record in records:
        buckets[min(99, int(record.confidence * 100))] += 1
    return (
        Counter(r.class_name for r in chosen),
        Counter(r.created_at.date() for r in chosen),
        buckets,
    )


@pytest.mark.anyio
async def test_any_range_counts_what_its_rows_count(database: Database) -> None:
    generator = random.Random(7)
    records = [
        synthetic_record(
            f"rollup-{i}",
            generator.choice(CLASSES),
            created_at=START + timedelta(seconds=generator.uniform(0, 4 * 86400)),
            confidence=generator.choice([generator.random(), 0.29, 0.57, 1.0, 0.0]),
        )
        for i in range(600)
    ]

    def check(session: Session) -> None:
        repository.add_predictions(session, records)
        edges: list[datetime | None] = [None, START, START + timedelta(days=4)]
        edges += [START + timedelta(seconds=generator.uniform(-3600, 5 * 86400)) for _ in range(14)]
        edges += [datetime(2026, 3, 3, tzinfo=UTC), datetime(2026, 3, 3, 5, tzinfo=UTC)]
        for after in edges:
            for before in edges:
                if after is not None and before is not None and after >= before:
                    continue
                for class_name in (None, "tabby"):
                    by_class, by_day, buckets = rows_between(session, after, before, class_name)
                    counts = rollups.class_counts(session, after, before, class_name)
                    assert +counts.by_class == by_class, (after, before, class_name)
                    assert +counts.by_day == by_day, (after, before, class_name)
                assert rollups.confidence_buckets(session, after, before) == buckets

    await database.run(check)


# --- the whole tables, after everything a real database does to a writer ------------------------


@pytest.fixture
def committed() -> Iterator[tuple[Database, str]]:
    """A fresh PostgreSQL database at the head, with real commits on several connections."""
    with fresh_postgres_database() as url:
        engine = create_engine(url)
        upgrade_to_head(engine)
        yield Database(engine, max_concurrency=4), url
        engine.dispose()


ROLLUPS_FROM_ROWS = {
    "rollup_hourly_classes": """
        SELECT date_trunc('hour', created_at, 'UTC'), model_version, inference_backend, precision,
               class_name, count(*), round(sum(confidence)::numeric, 6)
        FROM predictions GROUP BY 1, 2, 3, 4, 5""",
    "rollup_daily_classes": """
        SELECT (created_at AT TIME ZONE 'UTC')::date, model_version, inference_backend, precision,
               class_name, count(*), round(sum(confidence)::numeric, 6)
        FROM predictions GROUP BY 1, 2, 3, 4, 5""",
    "rollup_hourly_confidences": """
        SELECT date_trunc('hour', created_at, 'UTC'), model_version, inference_backend, precision,
               least(99, floor(confidence * 100))::smallint, count(*)
        FROM predictions GROUP BY 1, 2, 3, 4, 5""",
}
ROLLUPS_AS_KEPT = {
    "rollup_hourly_classes": """SELECT hour, model_version, backend, precision, class_name, count,
        round(confidence_sum::numeric, 6) FROM rollup_hourly_classes""",
    "rollup_daily_classes": """SELECT day, model_version, backend, precision, class_name, count,
        round(confidence_sum::numeric, 6) FROM rollup_daily_classes""",
    "rollup_hourly_confidences": """SELECT hour, model_version, backend, precision, bucket, count
        FROM rollup_hourly_confidences""",
}


def assert_rollups_equal_rows(database: Database) -> int:
    with database.engine.connect() as connection:
        for table, from_rows in ROLLUPS_FROM_ROWS.items():
            expected = {tuple(row) for row in connection.execute(text(from_rows))}
            kept = {tuple(row) for row in connection.execute(text(ROLLUPS_AS_KEPT[table]))}
            assert kept == expected, table
        return int(connection.scalar(select(func.count(PredictionRecord.id))) or 0)


@pytest.mark.anyio
async def test_rollups_stay_exact_through_concurrency_retries_copy_and_an_outage(
    committed: tuple[Database, str],
) -> None:
    database, url = committed
    database_name = url.rsplit("/", 1)[1]
    generator = random.Random(11)

    def record(tag: str, class_name: str | None = None) -> PredictionRecord:
        return synthetic_record(
            tag,
            class_name or generator.choice(CLASSES),
            created_at=START + timedelta(seconds=generator.uniform(0, 3 * 86400)),
            confidence=generator.random(),
        )

    writers = [PredictionWriter(database) for _ in range(3)]  # three "processes"
    for writer in writers:
        writer.start()
    try:
        # Concurrent group commits from three writers.
        stored = await asyncio.gather(*(writers[i % 3].store(record(f"c{i}")) for i in range(300)))
        assert len(stored) == 300
        # A group with a row the database refuses: retried row by row; the bad one rolls back
        # with its counts, its neighbours are counted once.
        outcomes = await asyncio.gather(
            *(writers[0].store(record(f"g{i}")) for i in range(10)),
            writers[0].store(record("bad", class_name="x" * 500)),
            return_exceptions=True,
        )
        assert isinstance(outcomes[-1], RecordNotStored)
        assert sum(isinstance(o, PredictionRecord) for o in outcomes) == 10
        # Rows inserted by another tool: COPY (the bench's fill), counted by the same trigger.
        with database.engine.connect() as connection:
            raw = connection.connection.dbapi_connection
            assert raw is not None
            with raw.cursor() as cursor:  # type: ignore[attr-defined]
                columns = (
                    "created_at, request_id, model_name, model_version, inference_backend, "
                    "class_id, class_name, confidence, top_k, image_sha256, image_width, "
                    "image_height, image_format, image_bytes, latency_ms"
                )
                with cursor.copy(f"COPY predictions ({columns}) FROM STDIN") as copy:
                    for i in range(200):
                        r = record(f"copy{i}")
                        copy.write_row(
                            (r.created_at, r.request_id, r.model_name, "sha256:copied",
                             r.backend, r.class_id, r.class_name, r.confidence, "[]",
                             r.image_sha256, 1, 1, "PNG", 1, 1.0)
                        )  # fmt: skip
            raw.commit()
        # An outage in the middle of writing: what was acknowledged is counted, nothing else.
        set_connections_allowed(database_name, False)
        failed = await asyncio.gather(
            *(writers[1].store(record(f"o{i}")) for i in range(20)), return_exceptions=True
        )
        assert all(isinstance(f, DatabaseUnavailable) for f in failed)
        set_connections_allowed(database_name, True)
        after = await asyncio.gather(*(writers[2].store(record(f"a{i}")) for i in range(50)))
        assert len(after) == 50
    finally:
        set_connections_allowed(database_name, True)
        for writer in writers:
            await writer.close()
    assert assert_rollups_equal_rows(database) == 300 + 10 + 200 + 50
