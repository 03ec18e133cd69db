"""Time partitions of `predictions` on PostgreSQL, and RETENTION_DAYS.

`predictions` is partitioned by range of `created_at`, one partition per UTC day
(`predictions_p20261201`). `maintain` creates the partitions of the coming days and, with
RETENTION_DAYS, removes whole days of rows: a day's partition is detached CONCURRENTLY (inserts
into the other days go on) and dropped, in well under a second whatever its size, instead of a
DELETE that rewrites and bloats the table. The rollups keep the removed days' counts.

There is no default partition (PostgreSQL cannot detach concurrently beside one). Instead the
group commit makes sure the days of its rows have partitions (`ensure_days`): a lookup of a
cached set for today's rows, and for a row of another day (a clock far off, an import of old
rows) a CREATE TABLE IF NOT EXISTS in its transaction, so no insert fails for want of one.

SQLite keeps a plain table: retention there is a DELETE of the rows before the cutoff.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import structlog
from sqlalchemy import Connection, Engine, text

log = structlog.get_logger("visinspect.db")

PARTITION = re.compile(r"^predictions_p(\d{8})$")
AHEAD_DAYS = 7
# Days known to have a partition, per database: only days near today (retention never drops
# them), so that a dropped or rolled-back partition is never taken for one that exists.
_known: set[tuple[str, date]] = set()
# One maintainer at a time among the server processes and the CLI (any 64-bit number of ours).
_LOCK_KEY = 0x7669_7369_6E73_7002


def partition_name(day: date) -> str:
    return f"predictions_p{day:%Y%m%d}"


def is_partition(name: str) -> bool:
    """A table that is one of `predictions`' partitions (not part of the ORM's schema)."""
    return bool(PARTITION.match(name))


def include_name(name: str | None, type_: str, _parents: object) -> bool:
    """Alembic's include_name hook: the partitions are no tables of the ORM's schema."""
    return not (type_ == "table" and name is not None and is_partition(name))


def create_partition_sql(day: date) -> str:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return (
        f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF predictions "
        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{(start + timedelta(days=1)).isoformat()}')"
    )


def is_partitioned(connection: Connection) -> bool:
    if connection.dialect.name != "postgresql":
        return False
    kind = connection.scalar(
        text("SELECT relkind FROM pg_class WHERE oid = to_regclass('predictions')")
    )
    return bool(kind == "p")


def day_partitions(connection: Connection) -> dict[date, str]:
    """The day partitions there are, by day."""
    names = connection.scalars(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass('predictions')"
        )
    )
    days = {}
    for name in names:
        if match := PARTITION.match(name):
            days[datetime.strptime(match[1], "%Y%m%d").date()] = name
    return days


# Per database: the day the list was read, and each day's first id, in order. Ids are drawn in
# time order and only grow, so once a day has a row its first id never changes (`days_of_id`).
_first_ids: dict[str, tuple[date, list[tuple[int, date]]]] = {}


def days_of_id(connection: Connection, prediction_id: int) -> tuple[date, date | None] | None:
    """The days a prediction with this id can belong to, [first, last] (last None: any later
    day): the last day whose first id is not above it, and the day before (a row made just
    before midnight may be written, and its id drawn, just after). None when no day had started
    by that id. A lookup bounded by these days reads two partitions instead of probing every one
    (365 a year with no retention). The first ids are read once a day, in one query; a first id
    that no longer holds (a table emptied and refilled with its sequence reset) can only make
    the bounded lookup miss, and callers then look everywhere."""
    database, today = str(connection.engine.url), datetime.now(UTC).date()
    cached = _first_ids.get(database)
    if cached is None or cached[0] < today:
        cached = (today, _read_first_ids(connection))
        _first_ids[database] = cached
    started = [day for first, day in cached[1] if first <= prediction_id]
    if not started:
        return None
    last = max(started)
    newest = last == cached[1][-1][1]  # days begun since the list was read are later still
    return last - timedelta(days=1), None if newest else last


def _read_first_ids(connection: Connection) -> list[tuple[int, date]]:
    days = day_partitions(connection)
    if not days:
        return []
    firsts = " UNION ALL ".join(
        f"SELECT (SELECT min(id) FROM \"{name}\"), DATE '{day.isoformat()}'"  # noqa: S608
        for day, name in sorted(days.items())
    )
    return [
        (int(first), day) for first, day in connection.execute(text(firsts)) if first is not None
    ]


def known(engine: Engine, days: set[date]) -> bool:
    """Whether `ensure_days` found (or made) these days' partitions already: then it has nothing
    to do, and the caller may insert without a transaction of its own."""
    database = str(engine.url)
    return all((database, day) in _known for day in days)


def ensure_days(connection: Connection, days: set[date]) -> None:
    """Partitions for these days, in the caller's transaction, before it inserts their rows."""
    if connection.dialect.name != "postgresql":
        return
    database = str(connection.engine.url)
    wanted = {day for day in days if (database, day) not in _known}
    if not wanted or not is_partitioned(connection):
        return
    existing = day_partitions(connection)
    for day in sorted(wanted - set(existing)):
        try:
            with connection.begin_nested():  # a failure must not abort the caller's transaction
                connection.execute(text(create_partition_sql(day)))
        except Exception as exc:  # e.g. the serving role may not create tables (Kubernetes)
            log.error(
                "db.partition_not_created",
                day=day.isoformat(),
                reason=str(exc).splitlines()[0],
                hint="run `visinspect db maintain` as the schema's owner (the CronJob does)",
            )
    today = datetime.now(UTC).date()
    _known.update((database, d) for d in wanted if -1 <= (d - today).days <= AHEAD_DAYS)


@dataclass(slots=True)
class Maintenance:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    deleted_rows: int = 0  # SQLite: rows deleted
    drop_seconds: list[float] = field(default_factory=list)  # each detach + drop
    skipped: bool = False  # another process holds the lock, or this role does not own the table


def maintain(engine: Engine, retention_days: int, today: date | None = None) -> Maintenance:
    """Partitions for today and AHEAD_DAYS more; with `retention_days` > 0, the days before
    today - retention_days removed. Blocking (run it in a thread); safe to run from anywhere."""
    today = today or datetime.now(UTC).date()
    done = Maintenance()
    cutoff = today - timedelta(days=retention_days) if retention_days > 0 else None
    if engine.dialect.name != "postgresql":
        if cutoff is not None:
            done.deleted_rows = _delete_before(engine, cutoff)
        return done
    # DETACH ... CONCURRENTLY cannot run in a transaction: autocommit, statement by statement.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if not is_partitioned(connection):
            return done
        if not _owns_predictions(connection):  # partitions are the schema owner's to make
            done.skipped = True
            return done
        if not connection.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": _LOCK_KEY}):
            done.skipped = True
            return done
        try:
            existing = day_partitions(connection)
            for offset in range(AHEAD_DAYS + 1):
                day = today + timedelta(days=offset)
                if day not in existing:
                    _create(connection, day, done)
            if cutoff is not None:
                for day, name in sorted(existing.items()):
                    if day < cutoff:
                        _drop(connection, name, done)

        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
    return done


def _owns_predictions(connection: Connection) -> bool:
    return bool(
        connection.scalar(
            text(
                "SELECT pg_has_role(relowner, 'MEMBER') FROM pg_class WHERE oid = 'predictions'::regclass"
            )
        )
    )


def _create(connection: Connection, day: date, done: Maintenance) -> None:
    try:
        connection.execute(text(create_partition_sql(day)))
        done.created.append(partition_name(day))
    except Exception as exc:  # a concurrent maintainer made it first
        log.warning(
            "db.partition_not_created", day=day.isoformat(), reason=str(exc).splitlines()[0]
        )


def _drop(connection: Connection, name: str, done: Maintenance) -> None:
    started = time.perf_counter()
    connection.execute(text(f"ALTER TABLE predictions DETACH PARTITION {name} CONCURRENTLY"))
    connection.execute(text(f"DROP TABLE {name}"))
    done.drop_seconds.append(time.perf_counter() - started)
    done.dropped.append(name)


def _delete_before(engine: Engine, cutoff: date) -> int:
    moment = datetime(cutoff.year, cutoff.month, cutoff.day, tzinfo=UTC)
    with engine.begin() as connection:
        result = connection.execute(
            text("DELETE FROM predictions WHERE created_at < :t"),
            {"t": moment.strftime("%Y-%m-%d %H:%M:%S.%f")},
        )
        return int(result.rowcount or 0)


def build_index(connection: Connection, name: str, columns: list[str], using: str) -> None:
    """Build the partitioned index `name` of `predictions` without blocking inserts: the
    parent's index is made on the parent only, each partition's CONCURRENTLY, then attached
    (the parent's is valid once all are; a partition created meanwhile gets its own with it).
    `connection` is in autocommit (CONCURRENTLY cannot run in a transaction). Safe to run
    again after it died half-way."""
    definition = f"USING {using} ({', '.join(columns)})"
    connection.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON ONLY predictions {definition}"))
    # Named by what they hold: an index built before under another definition keeps its name.
    suffix = "_".join([*columns, using])
    for partition in _partitions_without(connection, name):
        child = f"{partition}_{suffix}"[:63]
        _drop_invalid(connection, child)  # what a build that died left behind
        connection.execute(
            text(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {child} ON {partition} {definition}")
        )
        connection.execute(text(f"ALTER INDEX {name} ATTACH PARTITION {child}"))


def _partitions_without(connection: Connection, index: str) -> list[str]:
    """The partitions of `predictions` that have no index attached to the partitioned `index`."""
    return list(
        connection.scalars(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'predictions'::regclass AND NOT EXISTS ("
                "  SELECT 1 FROM pg_inherits a JOIN pg_index x ON x.indexrelid = a.inhrelid "
                "  WHERE a.inhparent = to_regclass(:index) AND x.indrelid = c.oid) "
                "ORDER BY c.relname"
            ),
            {"index": index},
        )
    )


def _drop_invalid(connection: Connection, index: str) -> None:
    invalid = connection.scalar(
        text("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:index)"),
        {"index": index},
    )
    if invalid:
        connection.execute(text(f"DROP INDEX CONCURRENTLY {index}"))
