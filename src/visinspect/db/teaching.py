"""The queries of teaching: label sets, labels, heads, their audit trail and answers. Functions
take a session and only flush, as in `repository.py`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Select, exists, func, select, update
from sqlalchemy.orm import Session, aliased

from visinspect.db.tables import (
    EmbeddingRecord,
    HeadAnswerRecord,
    HeadEventRecord,
    HeadRecord,
    LabelRecord,
    LabelSetRecord,
    PredictionRecord,
)
from visinspect.errors import HeadChangedMeanwhile, TooManyLabelSets


def label_set(session: Session, name: str) -> LabelSetRecord | None:
    return session.scalars(select(LabelSetRecord).where(LabelSetRecord.name == name)).first()


def label_set_name(session: Session, label_set_id: int) -> str:
    record = session.get(LabelSetRecord, label_set_id)
    assert record is not None  # sets are never deleted
    return record.name


def label_sets(
    session: Session, limit: int | None = None, after: str | None = None
) -> list[LabelSetRecord]:
    """The sets by name, from after `after`, at most `limit`."""
    statement = select(LabelSetRecord).order_by(LabelSetRecord.name)
    if after is not None:
        statement = statement.where(LabelSetRecord.name > after)
    return list(session.scalars(statement.limit(limit)))


def count_label_sets(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(LabelSetRecord)) or 0)


def add(session: Session, row: object) -> None:
    session.add(row)
    session.flush()


def create_label_set(session: Session, record: LabelSetRecord, most: int) -> bool:
    """Insert a new set; False (nothing inserted) when the name is taken; TooManyLabelSets when
    `most` sets exist (counted under a lock on the table's first set, so that two creations
    at once cannot both take the last place)."""
    if label_set(session, record.name) is not None:
        return False
    first = session.scalar(select(LabelSetRecord.id).order_by(LabelSetRecord.id).limit(1))
    if first is not None:
        lock_label_set(session, first)
    if count_label_sets(session) >= most:
        raise TooManyLabelSets(
            f"the service holds {most} label sets (MAX_LABEL_SETS): add classes to an existing "
            "set, or raise the limit"
        )
    add(session, record)
    return True


def with_counts(
    session: Session, name: str | None = None, limit: int | None = None, after: str | None = None
) -> list[tuple[LabelSetRecord, dict[str, int]]]:
    """The sets by name (`label_sets`; or the one named), each with its predictions per class
    by latest label, counted in one query for all of them."""
    if name is None:
        records = label_sets(session, limit, after)
    else:
        records = [r for r in [label_set(session, name)] if r]
    counts: dict[int, dict[str, int]] = {r.id: {} for r in records}
    if records:
        latest = _latest_labels_of([r.id for r in records]).subquery()
        rows = session.execute(
            select(latest.c.label_set_id, latest.c.class_name, func.count()).group_by(
                latest.c.label_set_id, latest.c.class_name
            )
        )
        for set_id, class_name, n in rows:
            counts[int(set_id)][str(class_name)] = int(n)
    return [(r, counts[r.id]) for r in records]


def add_classes(
    session: Session, label_set_id: int, merge: Callable[[list[str]], list[str]]
) -> LabelSetRecord:
    """The set's classes become `merge(its classes)`, read and written under the set's lock: two
    additions at once both land (each merges into what the other wrote)."""
    record = lock_label_set(session, label_set_id)
    record.classes = merge(list(record.classes))
    session.flush()
    return record


def labelled_classes(session: Session, label_set_id: int) -> set[str]:
    """Classes that any label of the set names (the latest or not): these are never dropped."""
    rows = session.scalars(
        select(LabelRecord.class_name).where(LabelRecord.label_set_id == label_set_id).distinct()
    )
    return set(rows)


@dataclass(frozen=True, slots=True)
class Labelled:
    """A prediction's latest label in a set, with its kept embedding of one base model."""

    label_id: int
    prediction_id: int
    class_name: str
    embedding: tuple[float, float, bytes] | None  # (low, scale, codes); None: not kept


def training_rows(session: Session, label_set_id: int, model_version: str) -> list[Labelled]:
    """Every prediction's latest label in the set, in label order, with its embedding from
    `model_version` where one is kept."""
    latest = _latest_labels(label_set_id).subquery()
    kept = EmbeddingRecord
    statement = (
        select(
            latest.c.id,
            latest.c.prediction_id,
            latest.c.class_name,
            kept.low,
            kept.scale,
            kept.codes,
        )
        .outerjoin(
            kept,
            (kept.prediction_id == latest.c.prediction_id) & (kept.model_version == model_version),
        )
        .order_by(latest.c.id)
    )
    return [
        Labelled(
            int(label_id),
            int(prediction_id),
            str(name),
            None if codes is None else (float(low), float(scale), bytes(codes)),
        )
        for label_id, prediction_id, name, low, scale, codes in session.execute(statement)
    ]


def _latest_labels(label_set_id: int) -> Select[LabelRecord]:
    """The labels of a set that no later label of the same prediction replaces."""
    return _latest_labels_of([label_set_id])


def _latest_labels_after(label_set_id: int, label_id: int) -> Select[LabelRecord]:
    """The latest labels of a set given after label `label_id` (what a version is judged on)."""
    return _latest_labels(label_set_id).where(LabelRecord.id > label_id)


def _latest_labels_of(label_set_ids: list[int]) -> Select[LabelRecord]:
    later = aliased(LabelRecord)
    replaced = exists().where(
        later.label_set_id == LabelRecord.label_set_id,
        later.prediction_id == LabelRecord.prediction_id,
        later.id > LabelRecord.id,
    )
    return select(LabelRecord).where(LabelRecord.label_set_id.in_(label_set_ids), ~replaced)


def latest_label_id(session: Session, label_set_id: int) -> int:
    newest = select(func.max(LabelRecord.id)).where(LabelRecord.label_set_id == label_set_id)
    return int(session.scalar(newest) or 0)


def image_digests(session: Session, prediction_ids: list[int]) -> dict[int, str]:
    """The image sha256 of each prediction found among `prediction_ids`."""
    statement = select(PredictionRecord.id, PredictionRecord.image_sha256).where(
        PredictionRecord.id.in_(prediction_ids)
    )
    return {int(i): str(sha) for i, sha in session.execute(statement)}


def labelled_images(
    session: Session, label_set_id: int, class_name: str, limit: int
) -> list[tuple[int, str]]:
    """(prediction id, image sha256) of the newest `limit` predictions whose latest label in
    the set is `class_name` (a detector's good images)."""
    latest = _latest_labels(label_set_id).subquery()
    statement = (
        select(PredictionRecord.id, PredictionRecord.image_sha256)
        .join(latest, latest.c.prediction_id == PredictionRecord.id)
        .where(latest.c.class_name == class_name)
        .order_by(latest.c.id.desc())
        .limit(limit)
    )
    return [(int(i), str(sha)) for i, sha in session.execute(statement)]


def prediction_exists(session: Session, prediction_id: int) -> bool:
    return session.get(PredictionRecord, prediction_id) is not None


# --- heads ----------------------------------------------------------------------------------


def head(session: Session, head_id: int) -> HeadRecord | None:
    return session.get(HeadRecord, head_id)


def heads_of(
    session: Session, label_set_id: int, kind: str, limit: int | None = None
) -> list[HeadRecord]:
    statement = (
        select(HeadRecord)
        .where(HeadRecord.label_set_id == label_set_id, HeadRecord.kind == kind)
        .order_by(HeadRecord.version.desc())
        .limit(limit)
    )
    return list(session.scalars(statement))


def next_version(session: Session, label_set_id: int, kind: str) -> int:
    newest = select(func.max(HeadRecord.version)).where(
        HeadRecord.label_set_id == label_set_id, HeadRecord.kind == kind
    )
    return int(session.scalar(newest) or 0) + 1


def serving_heads(session: Session) -> list[tuple[HeadRecord, str]]:
    """Every active and shadow head, with its label set's name: what each process serves."""
    statement = (
        select(HeadRecord, LabelSetRecord.name)
        .join(LabelSetRecord, LabelSetRecord.id == HeadRecord.label_set_id)
        .where(HeadRecord.status.in_(("active", "shadow")))
        .order_by(HeadRecord.id)
    )
    return [(row, str(name)) for row, name in session.execute(statement)]


def generation(session: Session) -> int:
    """The newest head event's id: it changes whenever any head's status does."""
    return int(session.scalar(select(func.max(HeadEventRecord.id))) or 0)


def active_head(session: Session, label_set_id: int, kind: str) -> HeadRecord | None:
    statement = select(HeadRecord).where(
        HeadRecord.label_set_id == label_set_id,
        HeadRecord.kind == kind,
        HeadRecord.status == "active",
    )
    return session.scalars(statement).first()


def events_of(
    session: Session, label_set_id: int, limit: int = 200
) -> list[tuple[HeadEventRecord, str]]:
    """The set's newest events, each with its version's kind: one audit trail for the set."""
    statement = (
        select(HeadEventRecord, HeadRecord.kind)
        .join(HeadRecord, HeadRecord.id == HeadEventRecord.head_id)
        .where(HeadEventRecord.label_set_id == label_set_id)
        .order_by(HeadEventRecord.id.desc())
        .limit(limit)
    )
    return [(event, str(kind)) for event, kind in session.execute(statement)]


def last_promotion(session: Session, label_set_id: int, kind: str) -> HeadEventRecord | None:
    """The latest promotion of the set's `kind`: what a rollback undoes."""
    statement = (
        select(HeadEventRecord)
        .join(HeadRecord, HeadRecord.id == HeadEventRecord.head_id)
        .where(
            HeadEventRecord.label_set_id == label_set_id,
            HeadRecord.kind == kind,
            HeadEventRecord.action.in_(("promote", "rollback")),
        )
        .order_by(HeadEventRecord.id.desc())
        .limit(1)
    )
    return session.scalars(statement).first()


def lock_label_set(session: Session, label_set_id: int) -> LabelSetRecord:
    """The set's row, locked until the transaction ends and read fresh under the lock: changes
    to one set (its classes, its heads' statuses, a new version) take turns. PostgreSQL: a row
    lock (FOR UPDATE). SQLite: a write as the transaction's first statement takes the database's
    write lock, so that what is read after it is the latest."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(
            update(LabelSetRecord)
            .where(LabelSetRecord.id == label_set_id)
            .values(classes=LabelSetRecord.classes)
        )
    record = session.get(LabelSetRecord, label_set_id, with_for_update=True, populate_existing=True)
    assert record is not None  # sets are never deleted
    return record


def change_status(
    session: Session,
    head_id: int,
    status: str,
    expected: dict[int, str],
    expected_active: int | None,
    replaced_id: int | None,
    events: list[HeadEventRecord],
) -> HeadRecord:
    """One status change and its audit events in one transaction, under the set's lock: the
    statuses the change was decided on (`expected`, head id -> status, and the set's active
    head) are read again there, and HeadChangedMeanwhile (nothing changed) when another change
    came first. Then the replaced version is retired (one active per set, an index says so),
    and the head takes its new status."""
    row = session.get(HeadRecord, head_id)
    assert row is not None
    lock_label_set(session, row.label_set_id)
    fresh = {
        h.id: h.status
        for h in session.scalars(
            select(HeadRecord)
            .where(HeadRecord.id.in_(list(expected)))
            .execution_options(populate_existing=True)
        )
    }
    active = active_head(session, row.label_set_id, row.kind)
    if fresh != expected or (active.id if active else None) != expected_active:
        raise HeadChangedMeanwhile(
            f"head {head_id}'s set changed while this request was decided (another promotion, "
            "rollback or retirement came first); nothing was changed: look at the set's heads "
            "again and retry"
        )
    if replaced_id is not None and replaced_id != head_id:
        replaced = session.get(HeadRecord, replaced_id)
        if replaced is not None:
            replaced.status = "retired"
            session.flush()
    row.status = status
    session.add_all(events)
    session.flush()
    return row


def answer_counts(
    session: Session, label_set_id: int, head_id: int, after_label_id: int
) -> list[tuple[str, str, bool, int]]:
    """(truth, answer, decided, count): the head's answers to the predictions whose latest label
    in the set came after label `after_label_id`, counted by the database (quality). At most
    classes x classes x 2 rows, however many labels there are."""
    latest = _latest_labels_after(label_set_id, after_label_id).subquery()
    answer = HeadAnswerRecord
    statement = (
        select(latest.c.class_name, answer.class_name, answer.decided, func.count())
        .join(answer, answer.prediction_id == latest.c.prediction_id)
        .where(answer.head_id == head_id)
        .group_by(latest.c.class_name, answer.class_name, answer.decided)
    )
    return [(str(t), str(a), bool(d), int(n)) for t, a, d, n in session.execute(statement)]


def shared_correct(
    session: Session, label_set_id: int, heads: tuple[int, int], after_label_id: int
) -> tuple[int, int, int]:
    """(labels both heads answered, correct of the first, correct of the second), on the latest
    labels after label `after_label_id` (a shadow against the active head)."""
    latest = _latest_labels_after(label_set_id, after_label_id).subquery()
    mine, theirs = aliased(HeadAnswerRecord), aliased(HeadAnswerRecord)
    statement = (
        select(
            func.count(),
            func.count().filter(mine.class_name == latest.c.class_name),
            func.count().filter(theirs.class_name == latest.c.class_name),
        )
        .select_from(latest)
        .join(mine, (mine.prediction_id == latest.c.prediction_id) & (mine.head_id == heads[0]))
        .join(
            theirs, (theirs.prediction_id == latest.c.prediction_id) & (theirs.head_id == heads[1])
        )
    )
    shared, first, second = session.execute(statement).one()
    return int(shared), int(first or 0), int(second or 0)


@dataclass(frozen=True, slots=True)
class VersionCounts:
    """What a version's quality is computed from (`services/heads.py`)."""

    head: HeadRecord
    counts: list[tuple[str, str, bool, int]]  # `answer_counts`
    shared: tuple[int, int, int] | None  # a shadow's `shared_correct` against the active head


def quality_counts(session: Session, label_set_id: int, kind: str) -> list[VersionCounts]:
    """Every version of the set's `kind`, newest first, with its counts on the labels after it."""
    versions = heads_of(session, label_set_id, kind)
    active = next((h for h in versions if h.status == "active"), None)
    counted = []
    for head in versions:
        shared = None
        if head.status == "shadow" and active is not None:
            after = max(head.labels_until, active.labels_until)
            shared = shared_correct(session, label_set_id, (head.id, active.id), after)
        counts = answer_counts(session, label_set_id, head.id, head.labels_until)
        counted.append(VersionCounts(head, counts, shared))
    return counted


def answers_for(session: Session, prediction_ids: list[int]) -> list[HeadAnswerRecord]:
    if not prediction_ids:
        return []
    statement = (
        select(HeadAnswerRecord)
        .where(HeadAnswerRecord.prediction_id.in_(prediction_ids))
        .order_by(HeadAnswerRecord.id)
    )
    return list(session.scalars(statement))


def undecided(
    session: Session, label_set_id: int, head_id: int, limit: int, after: tuple[float, int] | None
) -> list[HeadAnswerRecord]:
    """The "needs a person" queue: the head's undecided answers that no label of the set
    follows, least confident first (keyset on (confidence, id))."""
    answers = HeadAnswerRecord
    wanted = [answers.label_set_id == label_set_id, answers.decided.is_(False)]
    return _unlabelled(session, label_set_id, head_id, wanted, limit, after, descending=False)


def _unlabelled(
    session: Session,
    label_set_id: int,
    head_id: int,
    wanted: list[ColumnElement[bool]],
    limit: int,
    after: tuple[float, int] | None,
    descending: bool,
) -> list[HeadAnswerRecord]:
    """The head's answers that match `wanted` and that no label of the set follows, ordered by
    (confidence, id), ascending or descending, from after the keyset position `after`."""
    answers = HeadAnswerRecord
    labelled = exists().where(
        LabelRecord.label_set_id == label_set_id,
        LabelRecord.prediction_id == answers.prediction_id,
    )
    filters = [*wanted, answers.head_id == head_id, ~labelled]
    if after is not None:
        beyond = (
            (answers.confidence < after[0])
            | ((answers.confidence == after[0]) & (answers.id < after[1]))
            if descending
            else (answers.confidence > after[0])
            | ((answers.confidence == after[0]) & (answers.id > after[1]))
        )
        filters.append(beyond)
    order = (
        (answers.confidence.desc(), answers.id.desc())
        if descending
        else (answers.confidence, answers.id)
    )
    statement = select(answers).where(*filters).order_by(*order).limit(limit)
    return list(session.scalars(statement))


@dataclass(frozen=True, slots=True)
class DetectorVerdict:
    """An active detector's recorded answer on a prediction, as the history shows it."""

    detector: str  # its label set's name
    detector_id: int
    version: int
    score: float
    verdict: str
    region: list[int] | None


def detector_verdicts(
    session: Session, prediction_ids: list[int]
) -> dict[int, list[DetectorVerdict]]:
    """The active (not shadow) detectors' answers on these predictions, by prediction id."""
    if not prediction_ids:
        return {}
    answers = HeadAnswerRecord
    statement = (
        select(answers, HeadRecord.version, LabelSetRecord.name)
        .join(HeadRecord, HeadRecord.id == answers.head_id)
        .join(LabelSetRecord, LabelSetRecord.id == HeadRecord.label_set_id)
        .where(
            answers.prediction_id.in_(prediction_ids),
            answers.shadow.is_(False),
            HeadRecord.kind == "detector",
        )
        .order_by(answers.id)
    )
    found: dict[int, list[DetectorVerdict]] = {}
    for answer, version, name in session.execute(statement):
        found.setdefault(answer.prediction_id, []).append(
            DetectorVerdict(
                str(name),
                answer.head_id,
                int(version),
                answer.confidence,
                answer.class_name,
                answer.region,
            )
        )
    return found


def kept_heat_map(
    session: Session, prediction_id: int, head_id: int | None
) -> tuple[HeadAnswerRecord, int, int] | None:
    """A detector's kept answer with its heat map on the prediction (the one of `head_id`, or
    the newest), with the image's width and height; None without one."""
    answers = HeadAnswerRecord
    statement = (
        select(answers, PredictionRecord.image_width, PredictionRecord.image_height)
        .join(PredictionRecord, PredictionRecord.id == answers.prediction_id)
        .where(answers.prediction_id == prediction_id, answers.heat.is_not(None))
        .order_by(answers.id.desc())
        .limit(1)
    )
    if head_id is not None:
        statement = statement.where(answers.head_id == head_id)
    found = session.execute(statement).first()
    return None if found is None else (found[0], int(found[1]), int(found[2]))


def anomalous(
    session: Session, label_set_id: int, head_id: int, limit: int, after: tuple[float, int] | None
) -> list[HeadAnswerRecord]:
    """The inspection queue: the detector's anomalous answers that no label of the set follows,
    most anomalous first (keyset on (score, id), both descending: the partial index read
    backwards)."""
    wanted = [HeadAnswerRecord.class_name == "anomalous"]
    return _unlabelled(session, label_set_id, head_id, wanted, limit, after, descending=True)


def answered_since(session: Session, head_id: int) -> datetime | None:
    return session.scalar(
        select(func.min(HeadAnswerRecord.created_at)).where(HeadAnswerRecord.head_id == head_id)
    )
