"""Rollups: per-hour and per-day counts that statistics and drift read instead of the rows.

The database maintains them: an AFTER INSERT trigger on `predictions` adds every inserted row to
`rollup_hourly_classes`, `rollup_daily_classes` and `rollup_hourly_confidences` in the inserting
transaction. So a row and its counts commit or roll back together (a retried group commit, an
outage mid-transaction), concurrent writers cannot count a row twice or miss one, and rows that
another release, `COPY` or a tool inserts are counted too. Deleting rows (retention) leaves the
rollups as they are: they are the history's summary.

Reading a time range [after, before) splits it on hour and day boundaries: whole days from the
daily rollup, whole hours from the hourly one, and the partial hours at the ends (a range need not
start on the hour) from the rows, through the (created_at, id) index. So all-time statistics read
a row per day and class, never the rows themselves.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, Engine, Integer, cast, func, select, text, tuple_
from sqlalchemy.orm import Session

from visinspect.db.tables import (
    DailyClassCount,
    HourlyClassCount,
    HourlyConfidenceCount,
    PredictionRecord,
)

HOUR, DAY = timedelta(hours=1), timedelta(days=1)
BUCKETS = 100  # confidence buckets: floor(100 c), 1.0 in the last

Grain = Literal["rows", "hours", "days"]


@dataclass(frozen=True, slots=True)
class Piece:
    """A part of a time range and what covers it; None = unbounded on that side."""

    grain: Grain
    start: datetime | None
    end: datetime | None


def split_range(after: datetime | None, before: datetime | None) -> list[Piece]:
    """[after, before) as pieces: rows for the partial hours at its ends, hours up to the day
    boundaries, whole days in between. Times are aware UTC; None = unbounded."""
    if after is not None and before is not None and after >= before:
        return []
    head: list[Piece] = []
    tail: list[Piece] = []
    low, high = after, before
    for grain, unit in (("rows", HOUR), ("hours", DAY)):
        if low is not None:
            up = _ceil(low, unit)
            if high is not None and up >= high:
                return [*head, Piece(grain, low, high), *tail]  # type: ignore[arg-type]
            if up > low:
                head.append(Piece(grain, low, up))  # type: ignore[arg-type]
                low = up
        if high is not None:
            down = _floor(high, unit)
            if down < high:
                tail.insert(0, Piece(grain, down, high))  # type: ignore[arg-type]
                high = down
        if low is not None and high is not None and low >= high:
            return [*head, *tail]
    return [*head, Piece("days", low, high), *tail]


def _floor(moment: datetime, unit: timedelta) -> datetime:
    moment = moment.astimezone(UTC)
    if unit == DAY:
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


def _ceil(moment: datetime, unit: timedelta) -> datetime:
    floor = _floor(moment, unit)
    return floor if floor == moment else floor + unit


# --- reading ------------------------------------------------------------------------------------


@dataclass(slots=True)
class ClassCounts:
    """Predictions in a range: per top-1 class and per UTC day, with their confidences' sum."""

    by_class: Counter[str] = field(default_factory=Counter)
    by_day: Counter[date] = field(default_factory=Counter)
    confidence_sum: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.by_class.values())


def class_counts(
    session: Session,
    after: datetime | None,
    before: datetime | None,
    class_name: str | None = None,
    per_day: bool = True,
) -> ClassCounts:
    """What GROUP BY class (and, with `per_day`, GROUP BY day) over the rows would give, from
    the rollups."""
    counts = ClassCounts()
    postgres = session.get_bind().dialect.name == "postgresql"
    for piece in split_range(after, before):
        table, moment, count, total = _class_columns(piece.grain)
        where = _between(moment, piece) + _class_is(piece.grain, class_name)
        if not per_day:
            statement = select(table.class_name, count, total).where(*where)
            for name, n, s in session.execute(statement.group_by(table.class_name)):
                counts.by_class[str(name)] += int(n)
                counts.confidence_sum += float(s)
            continue
        day = moment if piece.grain == "days" else func.date(moment)
        statement = select(table.class_name, day, count, total).where(*where)
        if piece.grain == "days" and postgres:
            # Per class and per day in one scan: a row per day and class would be many.
            statement = statement.group_by(
                func.grouping_sets(tuple_(table.class_name), tuple_(day))
            )
            for name, d, n, s in session.execute(statement):
                if name is not None:
                    counts.by_class[str(name)] += int(n)
                    counts.confidence_sum += float(s)
                else:
                    counts.by_day[_as_date(d)] += int(n)
            continue
        # Rows of partial hours, hours of partial days: few (class, day) pairs, one scan.
        for name, d, n, s in session.execute(statement.group_by(table.class_name, day)):
            counts.by_class[str(name)] += int(n)
            counts.by_day[_as_date(d)] += int(n)
            counts.confidence_sum += float(s)
    return counts


def confidence_buckets(
    session: Session, after: datetime | None, before: datetime | None
) -> list[int]:
    """Predictions per confidence bucket (floor(100 c), 0..99) in the range."""
    buckets = [0] * BUCKETS
    for piece in split_range(after, before):
        if piece.grain == "rows":
            bucket: ColumnElement[Any] = row_bucket(session.get_bind().dialect.name)
            count: ColumnElement[Any] = func.count(PredictionRecord.id)
            moment: Any = PredictionRecord.created_at
        else:  # whole hours, also inside whole days
            bucket, moment = HourlyConfidenceCount.bucket.expression, HourlyConfidenceCount.hour
            count = func.sum(HourlyConfidenceCount.count)
            piece = Piece("hours", piece.start, piece.end)
        for b, n in session.execute(
            select(bucket, count).where(*_between(moment, piece)).group_by(bucket)
        ):
            buckets[min(BUCKETS - 1, int(b))] += int(n)
    return buckets


def row_bucket(dialect: str) -> ColumnElement[Any]:
    """floor(100 c) in SQL, the same on PostgreSQL and SQLite (and Python's int(100 * c)): a
    cast truncates on SQLite; PostgreSQL's cast rounds, so it floors first."""
    scaled = PredictionRecord.confidence * 100
    return func.floor(scaled) if dialect == "postgresql" else cast(scaled, Integer)


def _class_columns(grain: Grain) -> tuple[Any, Any, ColumnElement[Any], ColumnElement[Any]]:
    if grain == "rows":
        rows = PredictionRecord
        return rows, rows.created_at, func.count(rows.id), func.sum(rows.confidence)
    table: Any = HourlyClassCount if grain == "hours" else DailyClassCount
    moment = table.hour if grain == "hours" else table.day
    return table, moment, func.sum(table.count), func.sum(table.confidence_sum)


def _between(moment: Any, piece: Piece) -> list[ColumnElement[bool]]:
    start: Any = piece.start.date() if piece.grain == "days" and piece.start else piece.start
    end: Any = piece.end.date() if piece.grain == "days" and piece.end else piece.end
    where = []
    if start is not None:
        where.append(moment >= start)
    if end is not None:
        where.append(moment < end)
    return where


def _class_is(grain: Grain, class_name: str | None) -> list[ColumnElement[bool]]:
    if class_name is None:
        return []
    table: Any = {"rows": PredictionRecord, "hours": HourlyClassCount, "days": DailyClassCount}
    return [table[grain].class_name == class_name]


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


# --- the triggers -------------------------------------------------------------------------------

_KEYS = "hour, model_version, backend, precision, class_name"
_DAY_KEYS = "day, model_version, backend, precision, class_name"
_BUCKET_KEYS = "hour, model_version, backend, precision, bucket"
# A row's hour, UTC day and confidence bucket, in each database's SQL. SQLAlchemy stores SQLite
# datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC here) and dates as 'YYYY-MM-DD': the same forms.
_ROW_KEYS = {
    "postgresql": (
        "date_trunc('hour', created_at, 'UTC')",
        "(created_at AT TIME ZONE 'UTC')::date",
        "least(99, floor(confidence * 100))::smallint",
    ),
    "sqlite": (
        "strftime('%Y-%m-%d %H:00:00.000000', created_at)",
        "date(created_at)",
        "min(99, CAST(confidence * 100 AS INTEGER))",
    ),
}
# SQLite's trigger is per row: its one new row, as a table the same statements can read.
_SQLITE_NEW_ROW = "(SELECT " + ", ".join(
    f"NEW.{column} AS {column}"
    for column in (
        "created_at", "model_version", "inference_backend", "precision", "class_name",
        "class_id", "model_name", "confidence",
    )
) + ") AS new_rows"  # fmt: skip


def _add_to_rollups(dialect: str, rows: str) -> list[str]:
    """The three statements that add the predictions in `rows` (a table, or the trigger's new
    rows) to the rollups. Sorted by key, so that concurrent writers lock the rollup rows in the
    same order. Used by the triggers and, once, by the migration for the rows already there."""
    hour, day, bucket = _ROW_KEYS[dialect]
    model = "model_version, inference_backend, precision"
    classes = "class_name, min(class_id), min(model_name), count(*), sum(confidence)"
    grouped = f"FROM {rows} WHERE true GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5"

    def add(table: str, sums: bool) -> str:
        """What a key already counted gets (target rows by table name: SQLite's triggers allow
        no alias)."""
        counts = f"count = {table}.count + excluded.count"
        if not sums:
            return counts
        return f"{counts}, confidence_sum = {table}.confidence_sum + excluded.confidence_sum"

    return [
        f"INSERT INTO rollup_hourly_classes ({_KEYS}, class_id, model_name, count, "
        f"confidence_sum) SELECT {hour}, {model}, {classes} {grouped} "
        f"ON CONFLICT ({_KEYS}) DO UPDATE SET {add('rollup_hourly_classes', True)}",
        f"INSERT INTO rollup_daily_classes ({_DAY_KEYS}, class_id, model_name, count, "
        f"confidence_sum) SELECT {day}, {model}, {classes} {grouped} "
        f"ON CONFLICT ({_DAY_KEYS}) DO UPDATE SET {add('rollup_daily_classes', True)}",
        f"INSERT INTO rollup_hourly_confidences ({_BUCKET_KEYS}, count) "
        f"SELECT {hour}, {model}, {bucket}, count(*) {grouped} "
        f"ON CONFLICT ({_BUCKET_KEYS}) DO UPDATE SET {add('rollup_hourly_confidences', False)}",
    ]


POSTGRES_FUNCTION = (
    "CREATE OR REPLACE FUNCTION visinspect_rollup_predictions() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN "
    + "; ".join(_add_to_rollups("postgresql", "new_rows"))
    + "; RETURN NULL; END $$"
)
POSTGRES_TRIGGER = """
CREATE TRIGGER predictions_rollup AFTER INSERT ON predictions
REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
EXECUTE FUNCTION visinspect_rollup_predictions()
"""
SQLITE_TRIGGER = (
    "CREATE TRIGGER predictions_rollup AFTER INSERT ON predictions BEGIN "
    + "; ".join(_add_to_rollups("sqlite", _SQLITE_NEW_ROW))
    + "; END"
)


def backfill_statements(dialect: str) -> list[str]:
    """Count the rows already there (a migration on a populated table), once."""
    return _add_to_rollups(dialect, "predictions")


# The trigger's function runs as the schema's owner (SECURITY DEFINER), so that the serving role
# needs no write privilege on the rollups (db/schema.py grants it none); its search_path is fixed
# to the schema, pg_temp last, so that a temporary table of the caller's cannot stand in for one.
POSTGRES_DEFINER = """
DO $$ BEGIN
  EXECUTE format(
    'ALTER FUNCTION visinspect_rollup_predictions() SECURITY DEFINER SET search_path = %I, pg_temp',
    current_schema());
END $$
"""
POSTGRES_INVOKER = (
    "ALTER FUNCTION visinspect_rollup_predictions() SECURITY INVOKER RESET search_path"
)


def trigger_statements(dialect: str) -> list[str]:
    if dialect == "postgresql":
        return [POSTGRES_FUNCTION, POSTGRES_DEFINER, POSTGRES_TRIGGER]
    return [SQLITE_TRIGGER]


def drop_trigger_statements(dialect: str) -> list[str]:
    if dialect == "postgresql":
        return [
            "DROP TRIGGER IF EXISTS predictions_rollup ON predictions",
            "DROP FUNCTION IF EXISTS visinspect_rollup_predictions()",
        ]
    return ["DROP TRIGGER IF EXISTS predictions_rollup"]


def install_triggers(engine: Engine) -> None:
    """For DATABASE_CREATE_ALL (tables made from the ORM, no migrations): the triggers too."""
    with engine.begin() as connection:
        for statement in drop_trigger_statements(engine.dialect.name):
            connection.execute(text(statement))
        for statement in trigger_statements(engine.dialect.name):
            connection.execute(text(statement))
