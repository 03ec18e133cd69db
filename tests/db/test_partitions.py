"""Partitions on PostgreSQL: the migration converts a populated table without losing a row, and
back; partitions are made ahead; RETENTION_DAYS drops whole days (inserts into other days go on
meanwhile) while the rollups keep their counts; SQLite deletes instead."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, event, func, select, text
from sqlalchemy.orm import Session

from tests.db.test_rollups import assert_rollups_equal_rows
from tests.support import fresh_postgres_database, synthetic_record
from visinspect.db import partitions, repository
from visinspect.db.partitions import AHEAD_DAYS, partition_name
from visinspect.db.schema import alembic_config, upgrade_to_head
from visinspect.db.session import Database
from visinspect.db.tables import HourlyClassCount, PredictionRecord

BEFORE_PARTITIONS = "8c2a5e7d1f43"  # the rollups; the next migration partitions the table
TODAY = datetime.now(UTC).date()


@pytest.fixture
def engine() -> Iterator[Engine]:
    with fresh_postgres_database() as url:
        made = create_engine(url)
        yield made
        made.dispose()


def migrate(engine: Engine, target: str, down: bool = False) -> None:
    config = alembic_config()
    with engine.connect() as connection:  # alembic begins its own transactions
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, target)
        connection.commit()


def add(engine: Engine, records: list[PredictionRecord]) -> None:
    with Session(engine) as session:
        repository.add_predictions(session, records)
        session.commit()


def rows(engine: Engine) -> list[tuple[Any, ...]]:
    """Every row, every column, in id order."""
    with engine.connect() as connection:
        return [tuple(r) for r in connection.execute(text("SELECT * FROM predictions ORDER BY id"))]


def spread(days: list[int], per_day: int = 20) -> list[PredictionRecord]:
    """Rows on these days (counted back from today), at different hours."""
    return [
        synthetic_record(
            f"day{d}-{i}",
            ["espresso", "tripod", "tabby"][i % 3],
            created_at=datetime(TODAY.year, TODAY.month, TODAY.day, tzinfo=UTC)
            - timedelta(days=d)
            + timedelta(minutes=37 * i),
            confidence=(i % 10) / 10 + 0.05,
        )
        for d in days
        for i in range(per_day)
    ]


def test_the_migration_partitions_a_populated_table_and_back_without_losing_a_row(
    engine: Engine,
) -> None:
    migrate(engine, BEFORE_PARTITIONS)
    add(engine, spread([40, 3, 1, 0]))
    with engine.begin() as connection:  # a review, to show reviews are left alone
        connection.execute(
            text(
                "INSERT INTO reviews (prediction_id, created_at, verdict, predicted_class_id, "
                "true_class_id) SELECT id, now(), 'correct', class_id, class_id FROM predictions "
                "ORDER BY id LIMIT 1"
            )
        )
    before = rows(engine)
    assert len(before) == 80

    upgrade_to_head(engine)

    assert rows(engine) == before  # every row, every column, the same ids
    with engine.connect() as connection:
        assert partitions.is_partitioned(connection)
        days = partitions.day_partitions(connection)
        assert {TODAY - timedelta(days=d) for d in (40, 3, 1, 0)} <= set(days)
        assert {TODAY + timedelta(days=n) for n in range(AHEAD_DAYS + 1)} <= set(days)
        # Each row sits in its own day's partition.
        for day, name in days.items():
            inside = connection.scalar(text(f"SELECT count(*) FROM {name}"))
            expected = sum(1 for r in spread([40, 3, 1, 0]) if r.created_at.date() == day)
            assert inside == expected, name
        assert connection.scalar(text("SELECT count(*) FROM reviews")) == 1
    assert_rollups_equal_rows(Database(engine, 1))  # counted once, not again by the copy
    add(engine, spread([0], per_day=5))  # the sequence goes on; the trigger counts them
    assert [r[0] for r in rows(engine)][-5:] == list(range(81, 86))
    assert_rollups_equal_rows(Database(engine, 1))

    migrate(engine, BEFORE_PARTITIONS, down=True)

    with engine.connect() as connection:
        assert not partitions.is_partitioned(connection)
        assert partitions.day_partitions(connection) == {}
    assert len(rows(engine)) == 85
    add(engine, spread([0], per_day=1))
    assert_rollups_equal_rows(Database(engine, 1))


def test_retention_drops_whole_days_while_inserts_go_on_and_rollups_stay(engine: Engine) -> None:
    upgrade_to_head(engine)
    with engine.begin() as connection:  # as if the service had made them ahead back then
        for back in (45, 31):
            connection.execute(text(partitions.create_partition_sql(TODAY - timedelta(days=back))))
    add(engine, spread([45, 31, 29, 0]))
    add(engine, spread([400], per_day=3))  # a day without a partition: the insert makes one
    with Session(engine) as session:
        counted_before = session.scalar(select(func.sum(HourlyClassCount.count)))
    assert counted_before == 83

    stop = threading.Event()
    inserted: list[int] = []

    def insert_today() -> None:  # /predict's writes, into today's partition, meanwhile
        while not stop.is_set():
            add(engine, spread([0], per_day=1))
            inserted.append(1)

    writer = threading.Thread(target=insert_today)
    writer.start()
    try:
        done = partitions.maintain(engine, retention_days=30)
    finally:
        stop.set()
        writer.join()

    assert sorted(done.dropped) == [
        partition_name(TODAY - timedelta(days=400)),
        partition_name(TODAY - timedelta(days=45)),
        partition_name(TODAY - timedelta(days=31)),
    ]
    assert all(seconds < 1.0 for seconds in done.drop_seconds), done.drop_seconds
    with Session(engine) as session:
        oldest = session.scalar(select(func.min(PredictionRecord.created_at)))
        left = session.scalar(select(func.count(PredictionRecord.id)))
        counted_after = session.scalar(select(func.sum(HourlyClassCount.count)))
    assert oldest is not None
    assert oldest.date() == TODAY - timedelta(days=29)
    assert left == 40 + len(inserted)
    assert counted_after == counted_before + len(inserted)  # the history's counts stay
    again = partitions.maintain(engine, retention_days=30)
    assert (again.created, again.dropped, again.deleted_rows) == ([], [], 0)


def test_sqlite_keeps_a_plain_table_and_deletes_for_retention(tmp_path: Any) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/r.db")
    upgrade_to_head(engine)
    add(engine, spread([40, 0], per_day=4))
    done = partitions.maintain(engine, retention_days=30)
    assert (done.created, done.dropped, done.deleted_rows) == ([], [], 4)
    with Session(engine) as session:
        assert session.scalar(select(func.count(PredictionRecord.id))) == 4
        assert session.scalar(select(func.sum(HourlyClassCount.count))) == 8
    engine.dispose()


def test_today_is_never_without_its_partition(engine: Engine) -> None:
    upgrade_to_head(engine)
    later = TODAY + timedelta(days=30)
    done = partitions.maintain(engine, retention_days=0, today=later)
    assert partition_name(later + timedelta(days=AHEAD_DAYS)) in done.created
    with engine.connect() as connection:
        assert set(partitions.day_partitions(connection)) >= {
            later + timedelta(days=n) for n in range(AHEAD_DAYS + 1)
        }
    assert isinstance(later, date)


def test_an_index_is_built_partition_by_partition_and_again_after_dying_half_way(
    engine: Engine,
) -> None:
    """`partitions.build_index` (the history_indexes migration's): a build that died half-way
    (the parent's index made, one partition's left invalid by a CONCURRENTLY that failed) is
    finished by running it again: every partition gets a valid index, attached, and the
    parent's is valid; once more changes nothing. Inserts work throughout."""
    upgrade_to_head(engine)
    add(engine, spread([0, 1, 2]))
    with engine.connect() as connection:
        days = sorted(partitions.day_partitions(connection).values())

    def state() -> tuple[bool, list[tuple[str, bool]]]:
        with engine.connect() as connection:
            parent = connection.scalar(
                text("SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_t'::regclass")
            )
            children = connection.execute(
                text(
                    "SELECT c.relname, x.indisvalid FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_index x ON x.indexrelid = c.oid "
                    "WHERE i.inhparent = 'ix_t'::regclass ORDER BY c.relname"
                )
            )
            return bool(parent), [(str(n), bool(v)) for n, v in children]

    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("CREATE INDEX ix_t ON ONLY predictions (confidence)"))
        dead = f"{days[0]}_confidence_btree"
        connection.execute(text(f"CREATE INDEX {dead} ON {days[0]} (confidence)"))
        connection.execute(  # what a failed CREATE INDEX CONCURRENTLY leaves
            text(f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{dead}'::regclass")
        )
        partitions.build_index(connection, "ix_t", ["confidence"], "btree")
        assert state() == (True, [(f"{name}_confidence_btree", True) for name in days])
        partitions.build_index(connection, "ix_t", ["confidence"], "btree")
        assert state() == (True, [(f"{name}_confidence_btree", True) for name in days])
    add(engine, spread([0], per_day=3))


def test_an_id_lookup_reads_two_partitions_not_all(engine: Engine) -> None:
    """Rows over 40 days, written in time order; each found by id, and the plan of the lookup
    scans two day partitions (the newest day's rows: from the day before on, since days may have
    begun after the first ids were read). A stale first id (a table refilled after its sequence
    was reset) cannot hide a row: the lookup then looks everywhere."""
    upgrade_to_head(engine)
    made = spread(list(range(40, -1, -1)), per_day=3)
    made.sort(key=lambda r: r.created_at)
    add(engine, made)
    statements: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    for record in made[::7]:
        with Session(engine) as session:
            statements.clear()
            event.listen(engine, "before_cursor_execute", capture)
            try:
                found = repository.get_prediction(session, record.id)
            finally:
                event.remove(engine, "before_cursor_execute", capture)
            assert found is not None
            assert (found.id, found.request_id) == (record.id, record.request_id)
        (lookup,) = [(s, p) for s, p in statements if s.lstrip().startswith("SELECT predictions.")]
        with engine.connect() as connection:
            plan = connection.exec_driver_sql("EXPLAIN (COSTS OFF) " + lookup[0], lookup[1])
            scanned = {line for line in plan.scalars() if "predictions_p" in line}
        newest = record.created_at.date() == made[-1].created_at.date()
        assert 1 <= len(scanned) <= (2 + AHEAD_DAYS if newest else 2), scanned
    database = str(engine.url)
    read_on, firsts = partitions._first_ids[database]
    partitions._first_ids[database] = (read_on, [(10**15, day) for _, day in firsts])  # stale
    with Session(engine) as session:
        assert repository.get_prediction(session, made[-1].id) is not None
    with Session(engine) as session:
        assert repository.get_prediction(session, 10**12) is None
