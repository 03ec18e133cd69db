"""The queries the API needs, nothing else. Functions take a session and only flush."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import (
    JSON,
    ColumnElement,
    LargeBinary,
    Select,
    String,
    Table,
    delete,
    exists,
    func,
    insert,
    inspect,
    literal,
    select,
    text,
    tuple_,
)
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.types import TypeEngine

from visinspect.db import partitions, rollups, teaching
from visinspect.db.tables import (
    EmbeddingRecord,
    HeadAnswerRecord,
    PredictionRecord,
    ReviewRecord,
    UTCDateTime,
)
from visinspect.filters import HistoryFilter

S = TypeVar("S", bound=Select[*tuple[Any, ...]])


# Counting the rows that match a filter stops here (it reads at most this many index entries).
TOTAL_COUNT_CAP = 10_000


@dataclass(frozen=True, slots=True)
class ReviewGroup:
    """The latest reviews of one predicted class, UTC day, verdict and true class, counted."""

    predicted_class_id: int
    predicted_class_name: str
    day: date  # of the prediction
    verdict: str
    true_class_id: int
    count: int


# Every attribute of a record but its id, which comes from the sequence.
_INSERTED = [a for a in inspect(PredictionRecord).column_attrs if a.key != "id"]


def add_predictions(
    session: Session,
    records: list[PredictionRecord],
    embeddings: Sequence[EmbeddingRecord | None] = (),
    answers: Sequence[Sequence[HeadAnswerRecord]] = (),
) -> None:
    """Insert a group of rows and set their ids on the records (the group commit's rows are
    only ever inserted, so the unit of work's per-object bookkeeping is skipped); with each
    record's kept embedding, where it has one (`embeddings`, in the records' order), and its
    heads' answers (`answers`), in the same transaction.

    On PostgreSQL the group is one statement (`group_insert`), atomic by itself: once its days'
    partitions are known to exist, it runs without BEGIN and COMMIT, in one round trip."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        days = group_days(records)
        if isinstance(bind, Engine) and partitions.known(bind, days):
            session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        else:
            partitions.ensure_days(session.connection(), days)
        group = group_insert(records, embeddings, answers, bind.dialect)
        ids = session.scalars(group.statement, group.parameters).all()
        for record, row_id in zip(records, ids, strict=True):
            record.id = row_id
        return
    statement = insert(PredictionRecord).returning(
        PredictionRecord.id, sort_by_parameter_order=True
    )
    rows = [{a.key: getattr(record, a.key) for a in _INSERTED} for record in records]
    for record, row_id in zip(records, session.scalars(statement, rows), strict=True):
        record.id = row_id
    for model, dependent in (
        (EmbeddingRecord, _kept_embeddings(records, embeddings)),
        (HeadAnswerRecord, _head_answers(records, answers)),
    ):
        if dependent:
            session.execute(
                insert(model),
                [{"prediction_id": records[position - 1].id} | row for position, row in dependent],
            )


def group_days(records: list[PredictionRecord]) -> set[date]:
    """The UTC days whose partitions a group's rows go to."""
    return {_utc_day(r.created_at) for r in records}


def embeddings_of(
    session: Session, prediction_ids: list[int], model_version: str
) -> dict[int, tuple[float, float, bytes]]:
    """The kept embeddings of these predictions made by `model_version`: id -> (low, scale,
    codes). Embeddings of another base model are not comparable, so they are not returned."""
    found: dict[int, tuple[float, float, bytes]] = {}
    rows = EmbeddingRecord
    for start in range(0, len(prediction_ids), 5000):
        chunk = prediction_ids[start : start + 5000]
        statement = select(rows.prediction_id, rows.low, rows.scale, rows.codes).where(
            rows.prediction_id.in_(chunk), rows.model_version == model_version
        )
        for prediction_id, low, scale, codes in session.execute(statement):
            found[int(prediction_id)] = (float(low), float(scale), bytes(codes))
    return found


def delete_embeddings_before(session: Session, moment: datetime, batch: int = 10_000) -> int:
    """One batch of the kept embeddings older than `moment` (EMBEDDING_RETENTION_DAYS): at most
    `batch` rows per transaction, so that retention never holds a long lock."""
    oldest = (
        select(EmbeddingRecord.prediction_id)
        .where(EmbeddingRecord.created_at < moment)
        .limit(batch)
        .scalar_subquery()
    )
    result = session.execute(
        delete(EmbeddingRecord).where(EmbeddingRecord.prediction_id.in_(oldest))
    )
    return int(getattr(result, "rowcount", 0) or 0)


@dataclass(frozen=True, slots=True)
class GroupInsert:
    """A group's one statement (PostgreSQL) and its parameters: the predictions' ids come back
    in the records' order."""

    statement: TextClause
    parameters: dict[str, Any]


def group_insert(
    records: list[PredictionRecord],
    embeddings: Sequence[EmbeddingRecord | None],
    answers: Sequence[Sequence[HeadAnswerRecord]],
    dialect: Dialect,
) -> GroupInsert:
    """PostgreSQL: the whole group in one statement, one round trip. Its ids come from the
    sequence and its rows from one array per column (`_unnested`); the embeddings and the heads'
    answers are inserted by data-modifying CTEs that take their prediction's id by position.

    A group took seven round trips before (ids, BEGIN, one INSERT per table, COMMIT, the pool's
    ping): with every core busy each costs a wake-up of the database and then of the writer,
    about 0.7 ms, and requests wait for their group's commit (docs/benchmarks.md)."""
    predictions = cast(Table, PredictionRecord.__table__)
    columns = {a.columns[0].name: [getattr(r, a.key) for r in records] for a in _INSERTED}
    parameters: dict[str, Any] = {"count__": len(records)}
    parameters |= _array_parameters(predictions, columns, dialect)
    shape = [(predictions, tuple(columns))]
    for model, dependent in (
        (EmbeddingRecord, _kept_embeddings(records, embeddings)),
        (HeadAnswerRecord, _head_answers(records, answers)),
    ):
        if dependent:
            table, rows = cast(Table, model.__table__), [row for _, row in dependent]
            columns = {name: [row[name] for row in rows] for name in rows[0]}
            parameters |= _array_parameters(table, columns, dialect)
            parameters[f"{table.name}__of__"] = [position for position, _ in dependent]
            shape.append((table, tuple(columns)))
    return GroupInsert(_group_statement(tuple(shape), dialect), parameters)


def _kept_embeddings(
    records: list[PredictionRecord], embeddings: Sequence[EmbeddingRecord | None]
) -> list[tuple[int, dict[str, Any]]]:
    """Each kept embedding's row beside the position (from 1) of its prediction in the group:
    its id is not known yet."""
    return [
        (
            position,
            {
                "created_at": record.created_at,
                "model_version": embedding.model_version,
                "low": embedding.low,
                "scale": embedding.scale,
                "codes": embedding.codes,
            },
        )
        for position, (record, embedding) in enumerate(zip(records, embeddings, strict=False), 1)
        if embedding is not None
    ]


def _head_answers(
    records: list[PredictionRecord], answers: Sequence[Sequence[HeadAnswerRecord]]
) -> list[tuple[int, dict[str, Any]]]:
    """Each head's answer beside the position (from 1) of its prediction in the group."""
    return [
        (
            position,
            {
                "head_id": answer.head_id,
                "label_set_id": answer.label_set_id,
                "class_name": answer.class_name,
                "confidence": answer.confidence,
                "decided": answer.decided,
                "shadow": answer.shadow,
                "created_at": record.created_at,
                "region": answer.region,
                "heat": answer.heat,
            },
        )
        for position, (record, rows) in enumerate(zip(records, answers, strict=False), 1)
        for answer in rows
    ]


def _array_parameters(
    table: Table, columns: dict[str, list[Any]], dialect: Dialect
) -> dict[str, Any]:
    """One parameter per column, named after its table (`_unnested`); a dependent table's
    positions of its predictions (`of__`) are the caller's.

    An array of `bytea` or `jsonb` travels as text that the server parses element by element:
    256 kept embeddings took 23 ms that way, 256 top-k lists 11 ms. So a binary column goes in
    as one value, all rows' bytes joined, with arrays of where each row's starts and how long
    it is (6 ms), and a JSON column as one JSON array of all rows' documents (2 ms). A NULL
    goes in as a length of -1, or as JSON's null."""
    names = tuple(columns)
    processed: dict[str, Any] = {}
    for name, process in zip(names, _bind_processors(table, names, dialect), strict=True):
        values, kind, key = columns[name], _kind(table, name, dialect), f"{table.name}__{name}"
        if kind == "binary":
            lengths = [-1 if value is None else len(value) for value in values]
            processed[key] = b"".join(value for value in values if value is not None)
            starts = itertools.accumulate([1, *(max(n, 0) for n in lengths[:-1])])
            processed[f"{key}__at"] = list(starts)
            processed[f"{key}__length"] = lengths
        elif kind == "json":
            processed[key] = values if process is None else process(values)
        else:
            processed[key] = values if process is None else [process(value) for value in values]
    return processed


@functools.cache
def _bind_processors(
    table: Table, names: tuple[str, ...], dialect: Dialect
) -> list[Callable[[Any], Any] | None]:
    """What each column's type does to a value on the way in (aware datetimes to UTC, the top-k
    to JSONB), applied by hand: the values go in as arrays, which bypass the column types."""
    return [table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names]


def _element_type(column_type: TypeEngine[Any], dialect: Dialect) -> str:
    """The arrays' element type: strings as text, since a cast to varchar(n) would cut a long
    value short where the INSERT's assignment refuses it."""
    return "text" if isinstance(column_type, String) else str(column_type.compile(dialect))


@functools.cache
def _kind(table: Table, name: str, dialect: Dialect) -> str:
    """How `_array_parameters` sends a column (asked for every column of every group: cached)."""
    column_type = table.c[name].type.dialect_impl(dialect)
    if isinstance(column_type, LargeBinary):
        return "binary"
    return "json" if isinstance(column_type, JSON) else "array"


@functools.cache
def _group_statement(
    shape: tuple[tuple[Table, tuple[str, ...]], ...], dialect: Dialect
) -> TextClause:
    """The group's one statement (`_insert_group`): `ids` takes one value of the sequence per
    prediction, numbered in ascending order; the predictions' rows join it by their position,
    the other tables' rows by the position of their prediction (`of__`). Its text is the same
    for every group of the same tables, so the driver prepares it once; the server plans it
    once only where told to (the writer's own connection, `group_connection.py`): left to
    itself it plans again for every group. The names come from the ORM, never from a request."""
    parts = [
        "ids AS MATERIALIZED (SELECT id, row_number() OVER (ORDER BY id) AS n FROM (SELECT "
        "nextval(pg_get_serial_sequence('predictions', 'id')) AS id "
        "FROM generate_series(1, CAST(:count__ AS INTEGER))) AS allocated)"
    ]
    for number, (table, names) in enumerate(shape):
        key, position = ("id", "n__") if number == 0 else ("prediction_id", "of__")
        selected, source = _unnested(table, names, dialect, with_of=number > 0)
        parts.append(
            f"{table.name}__inserted AS (INSERT INTO {table.name} ({key}, {', '.join(names)}) "
            f"SELECT ids.id, {selected} {source} JOIN ids ON ids.n = {table.name}__u.{position})"
        )
    return text(f"WITH {', '.join(parts)} SELECT id FROM ids ORDER BY n")  # noqa: S608


def _unnested(
    table: Table, names: tuple[str, ...], dialect: Dialect, with_of: bool
) -> tuple[str, str]:
    """The select list and FROM clause of one table's rows, from one array per column (see
    `_array_parameters`); a JSON column's documents are joined to their rows by position."""
    prefix, rows = table.name, f"{table.name}__u"
    arrays = [f"CAST(:{prefix}__of__ AS INTEGER[])"] if with_of else []
    aliases = ["of__"] if with_of else []
    selected, joins = [], []
    for name in names:
        kind, key = _kind(table, name, dialect), f"{prefix}__{name}"
        if kind == "binary":
            arrays += [f"CAST(:{key}__at AS INTEGER[])", f"CAST(:{key}__length AS INTEGER[])"]
            aliases += [f"{name}__at", f"{name}__length"]
            selected.append(
                f"CASE WHEN {rows}.{name}__length < 0 THEN NULL ELSE substring(CAST(:{key} AS "
                f"BYTEA) FROM {rows}.{name}__at FOR {rows}.{name}__length) END"
            )
        elif kind == "json":
            joins.append(
                f"JOIN jsonb_array_elements(CAST(:{key} AS JSONB)) WITH ORDINALITY "
                f"AS {key}__rows (value, n) ON {key}__rows.n = {rows}.n__"
            )
            selected.append(f"NULLIF({key}__rows.value, 'null'::jsonb)")
        else:
            arrays.append(f"CAST(:{key} AS {_element_type(table.c[name].type, dialect)}[])")
            aliases.append(name)
            selected.append(f"{rows}.{name}")
    source = (
        f"FROM unnest({', '.join(arrays)}) WITH ORDINALITY AS {rows}({', '.join(aliases)}, n__) "
        + " ".join(joins)
    )
    return ", ".join(selected), source


def _utc_day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def get_prediction(session: Session, prediction_id: int) -> PredictionRecord | None:
    """One prediction by id. Partitioned by day, the key is (id, created_at): bounded by the
    days the id can belong to (`partitions.days_of_id`), the lookup reads two partitions."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        days = partitions.days_of_id(connection, prediction_id)
        if days is not None:
            first, last = days
            bounded = select(PredictionRecord).where(
                PredictionRecord.id == prediction_id,
                PredictionRecord.created_at >= _day_start(first),
            )
            if last is not None:
                bounded = bounded.where(
                    PredictionRecord.created_at < _day_start(last + timedelta(days=1))
                )
            found = session.scalars(bounded).first()
            if found is not None:
                return found
    return session.get(PredictionRecord, prediction_id)


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class After:
    """Where the previous page ended (keyset pagination): its last row's sort key and id."""

    created_at: datetime | None = None  # newest first
    confidence: float | None = None  # least confident first
    id: int = 0


def list_predictions(
    session: Session,
    where: HistoryFilter,
    limit: int,
    offset: int = 0,
    least_confident_first: bool = False,
    after: After | None = None,
) -> list[PredictionRecord]:
    """One page, newest first (or least confident first; id breaks ties), starting after
    `after`: an index range scan on (created_at, id), or (class_name, created_at, id) for one
    class, that reads only the page, however deep."""
    if least_confident_first:
        statement = _filtered(select(PredictionRecord), where)
        statement = statement.order_by(PredictionRecord.confidence.asc(), PredictionRecord.id.asc())
        if after is not None and after.confidence is not None:
            statement = statement.where(
                tuple_(PredictionRecord.confidence, PredictionRecord.id)
                > tuple_(literal(after.confidence), literal(after.id))
            )
    else:  # the class, if any, is part of the index key (`_newest_first`)
        statement = _filtered(select(PredictionRecord), replace(where, class_name=None))
        statement = _newest_first(statement, where.class_name, after)
    return list(session.scalars(statement.limit(limit).offset(offset)))


def _newest_first(statement: S, class_name: str | None, after: After | None) -> S:
    """Newest first from (created_at, id), or for one class from (class_name, created_at, id)
    alone. The class is asked for as a range of that whole key, ordered by it, not as
    `class_name = x`: given the equality, PostgreSQL may instead walk (created_at, id) backwards
    and filter on the class, betting that a frequent class turns up soon; when that class has
    gone quiet lately, the walk reads every newer row of the others (hundreds of thousands,
    100 ms at 10 M rows)."""
    rows = PredictionRecord
    key: list[Any] = [rows.created_at, rows.id]
    start: list[Any] = []
    if after is not None and after.created_at is not None:
        start = [literal(after.created_at, UTCDateTime()), literal(after.id)]
    if class_name is not None:
        key.insert(0, rows.class_name)
        statement = statement.where(rows.class_name >= class_name)
        if start:
            start.insert(0, literal(class_name))  # and >= (class_name, ...): this class only
        else:
            statement = statement.where(rows.class_name <= class_name)
    if start:
        statement = statement.where(tuple_(*key) < tuple_(*start))
    return statement.order_by(*(column.desc() for column in key))


def count_predictions(session: Session, where: HistoryFilter, cap: int) -> tuple[int, bool]:
    """The rows matching the filter, counted up to `cap` (reading at most cap + 1 index
    entries): (count, True), or (cap, False) when there are more."""
    matching = _filtered(select(PredictionRecord.id), where).limit(cap + 1).subquery()
    counted = int(session.scalar(select(func.count()).select_from(matching)) or 0)
    return (counted, True) if counted <= cap else (cap, False)


def prediction_stats(
    session: Session, where: HistoryFilter, top_classes: int
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """Total, counts per top-1 class (most frequent first) and per UTC day (oldest first), from
    the rollups (`db/rollups.py`): a row per day and class, whatever the number of predictions.
    Only the class and time filters apply (what the statistics offer)."""
    counts = rollups.class_counts(
        session, where.created_after, where.created_before, where.class_name
    )
    by_class = sorted(counts.by_class.items(), key=lambda item: (-item[1], item[0]))
    return (
        counts.total,
        by_class[:top_classes],
        [(d.isoformat(), n) for d, n in sorted(counts.by_day.items()) if n],
    )


def prediction_with_review(
    session: Session, prediction_id: int
) -> tuple[PredictionRecord | None, ReviewRecord | None]:
    """One prediction and its review that counts (the latest), read in one transaction."""
    record = get_prediction(session, prediction_id)
    if record is None:
        return None, None
    with_detectors(session, [record])
    return record, latest_reviews(session, [prediction_id]).get(prediction_id)


def with_detectors(session: Session, records: list[PredictionRecord]) -> None:
    """Each record given its active detectors' recorded answers (`anomalies`; `anomaly` is
    the most anomalous of them), as POST /predict answered them."""
    found = teaching.detector_verdicts(session, [r.id for r in records])
    for record in records:
        record.anomalies = tuple(found.get(record.id, ()))


@dataclass(frozen=True, slots=True)
class Page:
    records: list[PredictionRecord]  # up to limit + 1: the extra one says a next page exists
    total: int  # rows matching, counted up to TOTAL_COUNT_CAP
    total_exact: bool  # False: there are more than `total`
    reviews: dict[int, ReviewRecord]  # prediction id -> its latest review, where it has one


def page_with_reviews(
    session: Session,
    where: HistoryFilter,
    limit: int,
    offset: int,
    least_confident: bool,
    after: After | None,
) -> Page:
    """One page and one row more (whether a next page exists, without counting), the count of
    all matching rows up to TOTAL_COUNT_CAP, and the page's latest reviews: one transaction, so
    the three agree."""
    records = list_predictions(session, where, limit + 1, offset, least_confident, after)
    total, exact = count_predictions(session, where, TOTAL_COUNT_CAP)
    reviews = latest_reviews(session, [r.id for r in records[:limit]])
    with_detectors(session, records[:limit])
    return Page(records, total, exact, reviews)


def add_review(session: Session, review: ReviewRecord) -> ReviewRecord:
    session.add(review)
    session.flush()
    return review


def reviews_of(
    session: Session, prediction_id: int, limit: int, before: int | None = None
) -> list[ReviewRecord] | None:
    """At most `limit` reviews of one prediction, newest first, older than review `before` when
    given; None when there is no such prediction."""
    if get_prediction(session, prediction_id) is None:
        return None
    statement = select(ReviewRecord).where(ReviewRecord.prediction_id == prediction_id)
    if before is not None:
        statement = statement.where(ReviewRecord.id < before)
    return list(session.scalars(statement.order_by(ReviewRecord.id.desc()).limit(limit)))


def latest_reviews(session: Session, prediction_ids: list[int]) -> dict[int, ReviewRecord]:
    """The review that counts (the latest) of each of these predictions that has one."""
    if not prediction_ids:
        return {}
    latest = (
        select(func.max(ReviewRecord.id))
        .where(ReviewRecord.prediction_id.in_(prediction_ids))
        .group_by(ReviewRecord.prediction_id)
    )
    rows = session.scalars(select(ReviewRecord).where(ReviewRecord.id.in_(latest)))
    return {review.prediction_id: review for review in rows}


def latest_review_groups(session: Session, where: HistoryFilter) -> list[ReviewGroup]:
    """The latest review of each prediction that matches the class and time filters, grouped as
    finely as every quality figure needs (predicted class, UTC day, verdict, true class): one scan
    of the reviews, and no prediction is read, since each review carries its prediction's class
    and time. Reviews are counted in thousands, not millions: a few groups a day and class."""
    reviews = ReviewRecord
    later = aliased(ReviewRecord)
    # The latest review of each prediction: none later of the same prediction (an anti-join, one
    # pass over the reviews; `id IN (SELECT max(id) ... GROUP BY prediction_id)` took three).
    superseded = exists().where(later.prediction_id == reviews.prediction_id, later.id > reviews.id)
    # A review whose prediction was gone when its context was backfilled has none: not counted.
    filters: list[ColumnElement[bool]] = [
        ~superseded,
        reviews.prediction_created_at.is_not(None),
    ]
    if where.class_name is not None:
        filters.append(reviews.predicted_class_name == where.class_name)
    if where.created_after is not None:
        filters.append(reviews.prediction_created_at >= where.created_after)
    if where.created_before is not None:
        filters.append(reviews.prediction_created_at < where.created_before)
    day = func.date(reviews.prediction_created_at)  # connections run in UTC (db/session.py)
    keys = (
        reviews.predicted_class_id,
        reviews.predicted_class_name,
        day,
        reviews.verdict,
        reviews.true_class_id,
    )
    groups = session.execute(
        select(*keys, func.count(reviews.id)).where(*filters).group_by(*keys)
    ).all()
    return [
        ReviewGroup(int(p), str(name), date.fromisoformat(str(on)), str(verdict), int(t), int(n))
        for p, name, on, verdict, t, n in groups
    ]


# A window's confidences as counts per bucket of 0.01 (the rollups' buckets): their cumulative
# sums are what a two-sample Kolmogorov-Smirnov statistic needs (services/drift.py).
@dataclass(frozen=True, slots=True)
class WindowDistribution:
    count: int
    confidence_sum: float
    by_class: dict[str, int]  # top-1 class -> predictions
    buckets: list[int]  # predictions per confidence bucket: floor(100 c), 0..99


def window_distribution(session: Session, start: datetime, end: datetime) -> WindowDistribution:
    """Top-1 classes and confidences of the predictions made in [start, end), from the rollups
    (and the rows of the partial hours at the window's ends)."""
    counts = rollups.class_counts(session, start, end, per_day=False)
    return WindowDistribution(
        counts.total,
        counts.confidence_sum,
        {name: n for name, n in counts.by_class.items() if n},
        rollups.confidence_buckets(session, start, end),
    )


def window_distributions(
    session: Session, reference_start: datetime, start: datetime, end: datetime
) -> tuple[WindowDistribution, WindowDistribution]:
    """[start, end) and [reference_start, start) in one transaction: the same rows for both."""
    return (
        window_distribution(session, start, end),
        window_distribution(session, reference_start, start),
    )


def _filtered(statement: S, where: HistoryFilter) -> S:
    if where.class_name is not None:
        statement = statement.where(PredictionRecord.class_name == where.class_name)
    if where.image_sha256 is not None:
        statement = statement.where(PredictionRecord.image_sha256 == where.image_sha256)
    if where.created_after is not None:
        statement = statement.where(PredictionRecord.created_at >= where.created_after)
    if where.created_before is not None:
        statement = statement.where(PredictionRecord.created_at < where.created_before)
    if where.min_confidence is not None:
        statement = statement.where(PredictionRecord.confidence >= where.min_confidence)
    if where.max_confidence is not None:
        statement = statement.where(PredictionRecord.confidence <= where.max_confidence)
    if where.reviewed is not None:
        has_review = exists().where(ReviewRecord.prediction_id == PredictionRecord.id)
        statement = statement.where(has_review if where.reviewed else ~has_review)
    return statement
