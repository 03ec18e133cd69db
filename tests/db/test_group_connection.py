"""The group commit's own connection: one prepared statement a group, planned once, on a
connection that is replaced when the server closed it, and the same errors as the session's path."""

from __future__ import annotations

import asyncio
import os
import resource
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from tests.support import (
    TEST_DATABASE_URL,
    fresh_postgres_database,
    make_settings,
    set_connections_allowed,
    synthetic_record,
)
from visinspect.db import partitions, repository
from visinspect.db.group_connection import GroupConnection
from visinspect.db.schema import upgrade_to_head
from visinspect.db.session import Database, create_db_engine
from visinspect.db.tables import EmbeddingRecord, PredictionRecord
from visinspect.db.writer import PredictionWriter
from visinspect.errors import DatabaseTooSlow, DatabaseUnavailable, RecordNotStored


@pytest.fixture
def engine() -> Iterator[Engine]:
    """A migrated database with today's partition known, on the serving engine (statement
    timeout 1 s)."""
    with fresh_postgres_database() as url:
        engine = create_db_engine(make_settings(url, database_statement_timeout_s=1), serving=True)
        upgrade_to_head(engine)
        with Session(engine) as session:  # creates and remembers today's partition
            repository.add_predictions(session, [synthetic_record("first")])
            session.commit()
        assert partitions.known(engine, {datetime.now(UTC).date()})
        yield engine
        engine.dispose()


def _count(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count(PredictionRecord.id))) or 0)


def _kept(record: PredictionRecord) -> EmbeddingRecord:
    return EmbeddingRecord(
        created_at=record.created_at, model_version="sha256:0", low=-1.0, scale=0.5, codes=b"\x07"
    )


def _backend_pid(engine: Engine) -> int:
    """The server process of the group connection (the one that ran the group statement)."""
    with engine.connect() as conn:
        pid = conn.scalar(
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE 'WITH ids AS MATERIALIZED%' AND pid <> pg_backend_pid()"
            )
        )
    assert pid is not None
    return int(pid)


def test_a_group_is_stored_with_its_ids_in_order_and_planned_once(engine: Engine) -> None:
    group = GroupConnection(engine)
    try:
        for n in range(8):
            records = [synthetic_record(f"g{n}-{i}") for i in range(n % 3 + 1)]
            group.insert(records, [_kept(records[0])], [[] for _ in records])
            assert [r.id for r in records] == sorted(r.id for r in records)
        with Session(engine) as session:
            kept = set(session.scalars(select(EmbeddingRecord.prediction_id)))
        assert len(kept) == 8
        # Groups of 1, 2 and 3 rows: the same statement, planned generically every time (with
        # plan_cache_mode = auto the server planned it again for each group: a third of its work).
        plans = group._connected().execute(  # the connection's own prepared statements
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE 'WITH ids%'"  # not what the pool ran on it before (reflection)
        )
        rows = plans.fetchall()
        assert rows == [(8, 0)]
    finally:
        group.close()
    assert _count(engine) == 1 + 1 + 2 + 3 + 1 + 2 + 3 + 1 + 2


def test_a_connection_the_server_closed_is_replaced_before_the_group(engine: Engine) -> None:
    """A restart or pg_terminate_backend while the writer was idle costs no request a 503: the
    pool's ping did this before, here a poll without a round trip does."""
    group = GroupConnection(engine)
    try:
        group.insert([synthetic_record("before")], [], [[]])
        first = _backend_pid(engine)
        with engine.connect() as conn:  # waits (up to 10 s) until the backend has exited, as
            # a restart would have finished before the next group: without the wait its goodbye
            # was not always on the socket yet (CI, once in many runs)
            ended = conn.scalar(text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": first})
            assert ended
        records = [synthetic_record("after")]
        group.insert(records, [], [[]])  # no DatabaseUnavailable
        assert records[0].id is not None
        assert _backend_pid(engine) != first
    finally:
        group.close()
    assert _count(engine) == 3


def test_an_outage_is_database_unavailable_and_the_next_group_connects_again(
    engine: Engine,
) -> None:
    group = GroupConnection(engine)
    database = make_url(engine.url).database or ""
    try:
        group.insert([synthetic_record("before")], [], [[]])
        set_connections_allowed(database, False)
        try:
            with pytest.raises(DatabaseUnavailable, match="the database is unavailable"):
                group.insert([synthetic_record("lost")], [], [[]])
        finally:
            set_connections_allowed(database, True)
        group.insert([synthetic_record("after")], [], [[]])
    finally:
        group.close()
    with Session(engine) as session:
        stored = set(session.scalars(select(PredictionRecord.request_id)))
    assert stored == {"first", "before", "after"}


def test_a_group_held_past_the_statement_timeout_is_too_slow_and_the_connection_stays(
    engine: Engine,
) -> None:
    """A lock held elsewhere makes the insert wait: DATABASE_STATEMENT_TIMEOUT_S cancels it
    (DatabaseTooSlow, a 503), and the same connection writes the next group."""
    group = GroupConnection(engine)
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        other = create_db_engine(make_settings(engine.url.render_as_string(hide_password=False)))
        with other.begin() as conn:
            conn.execute(text("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE"))
            locked.set()
            release.wait(10)
        other.dispose()

    try:
        group.insert([synthetic_record("before")], [], [[]])
        pid = _backend_pid(engine)
        holder = threading.Thread(target=hold_lock)
        holder.start()
        assert locked.wait(10)
        try:
            with pytest.raises(DatabaseTooSlow, match="DATABASE_STATEMENT_TIMEOUT_S"):
                group.insert([synthetic_record("held")], [], [[]])
        finally:
            release.set()
            holder.join()
        group.insert([synthetic_record("after")], [], [[]])
        assert _backend_pid(engine) == pid
    finally:
        group.close()
    assert _count(engine) == 3


@pytest.mark.anyio
async def test_the_writer_uses_it_and_a_refused_row_still_fails_alone(engine: Engine) -> None:
    writer = PredictionWriter(Database(engine, 4))
    writer.start()
    try:
        await writer.store(synthetic_record("warm"))
        pid = _backend_pid(engine)  # the writer's own connection ran the group statement
        results = await asyncio.gather(
            writer.store(synthetic_record("a")),
            writer.store(synthetic_record("bad", class_name="x" * 500)),
            writer.store(synthetic_record("b")),
            return_exceptions=True,
        )
        assert _backend_pid(engine) == pid
    finally:
        await writer.close()
    assert isinstance(results[1], RecordNotStored)
    assert results[1].__cause__ is not None
    assert all(isinstance(r, PredictionRecord) for r in (results[0], results[2]))
    assert _count(engine) == 4


def test_the_tests_outer_transaction_keeps_the_session_path() -> None:
    """A database whose sessions are bound into a caller's transaction must not write through
    a connection of its own: its rows would escape the transaction."""
    engine = create_db_engine(make_settings(TEST_DATABASE_URL))
    try:
        with engine.connect() as connection:
            bound = Database(engine, 1, sessions=sessionmaker(bind=connection))
            assert PredictionWriter(bound)._connection is None
            assert PredictionWriter(Database(engine, 1))._connection is not None
    finally:
        engine.dispose()


def test_a_connection_whose_descriptor_is_above_1024_is_checked_too(engine: Engine) -> None:
    """A busy server holds over a thousand sockets and files: the check before each group must
    not use select(), which fails on descriptors past FD_SETSIZE (1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1400 if hard == resource.RLIM_INFINITY else min(hard, 1400)
    assert wanted >= 1400, f"this test needs RLIMIT_NOFILE's hard limit >= 1400, not {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    fresh = create_db_engine(make_settings(engine.url.render_as_string(hide_password=False)))
    group = GroupConnection(fresh)  # its pool connects now, past the descriptors held
    try:
        records = [synthetic_record("high")]
        group.insert(records, [], [[]])
        assert group._connected().fileno() > 1024  # the case this test is about
        group.insert([synthetic_record("again")], [], [[]])
    finally:
        group.close()
        fresh.dispose()
        for descriptor in held:
            os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert _count(engine) == 3
