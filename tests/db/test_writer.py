"""Group commits: every caller gets its own committed row; a bad row fails only its own caller."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from tests.support import fresh_postgres_database, synthetic_record
from visinspect.db.models import PredictionRecord
from visinspect.db.schema import upgrade_to_head
from visinspect.db.session import Database
from visinspect.db.writer import PredictionWriter
from visinspect.errors import RecordNotStored

pytestmark = pytest.mark.anyio


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


async def test_concurrent_stores_each_get_their_committed_row(committed_database: Database) -> None:
    writer = PredictionWriter(committed_database)
    writer.start()
    try:
        stored = await asyncio.gather(*(writer.store(synthetic_record(f"r{i}")) for i in range(50)))
    finally:
        await writer.close()
    assert len({r.id for r in stored}) == 50
    assert count(committed_database) == 50


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
