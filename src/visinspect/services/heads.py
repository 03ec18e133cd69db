"""Heads: trained on request, served on live traffic (active or shadow), promoted and rolled
back with an audit trail, and measured on the labels that came after them.

A head is of one of two kinds, with one lifecycle for both (this module): a "classifier" (a
linear layer on the embedding: the set's own classes) or a "detector" (a bank of good patches:
whether the part is good, and where it is not; `inference/anomaly.py`). Each kind has its own
versions and its own active version per label set.

A head version is `candidate` (trained), `shadow` (answers every prediction, recorded, never
returned), `active` (recorded and returned with every prediction; one per label set) or
`retired`. Every process serves what the database says: `HeadRegistry.watch` asks for the
newest head event every HEADS_REFRESH_S and reloads on a change, so a promotion reaches every
process of every replica within that time, without a restart. A head that cannot be loaded or
applied is logged, counted and skipped: it never fails a prediction.

Training runs `visinspect head train` in a child process (`offline/teach.py`): the serving process
never imports scikit-learn, and an install without it says so (501).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import resource
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio
import anyio.abc
import anyio.to_thread
import numpy as np
import structlog

from visinspect.db import teaching
from visinspect.db.session import Database
from visinspect.db.tables import HeadAnswerRecord, HeadEventRecord, HeadRecord
from visinspect.errors import (
    AnomalyMapNotFound,
    BaseModelDiffers,
    ClientGone,
    HeadNotFound,
    InvalidHeadChange,
    InvalidLabelSet,
    InvalidRequest,
    LabelSetNotFound,
    PredictionNotFound,
    RequestTimedOut,
    TooFewGoodImages,
    TooFewLabels,
    TrainingBusy,
    TrainingInProgress,
    TrainingTooLarge,
    TrainingUnavailable,
    VisinspectError,
)
from visinspect.inference import anomaly
from visinspect.inference.anomaly import DetectorAnswer, LoadedDetector
from visinspect.inference.artifact import Patches
from visinspect.inference.heads import (
    HeadAnswer,
    LoadedHead,
    check_counts,
    unpack,
)
from visinspect.services.history import decode_cursor, encode_cursor
from visinspect.services.labels import LabelService

log = structlog.get_logger("visinspect.heads")


class HeadRegistry:
    """The active and shadow heads and detectors this process serves, as the database last
    said. Detectors are served only with a patch graph (`patches`: the model artifact's)."""

    def __init__(
        self,
        database: Database,
        model_version: str,
        on_failure: Callable[[str], object] | None = None,
        patches: Patches | None = None,
    ) -> None:
        self.database = database
        self.model_version = model_version
        self.on_failure = on_failure  # the metric: reason -> count
        self.patches = patches
        self.heads: tuple[LoadedHead, ...] = ()
        self.detectors: tuple[LoadedDetector, ...] = ()
        self.generation = -1

    @property
    def active_sets(self) -> set[str]:
        """The sets with an active classifier or detector: what `?label_set=` may name."""
        sets = {h.label_set for h in self.heads if not h.shadow}
        return sets | {d.label_set for d in self.detectors if not d.shadow}

    def detectors_for(self, label_set: str | None) -> tuple[LoadedDetector, ...]:
        """The detectors an upload is scored by: the named set's, or every set's."""
        if label_set is None:
            return self.detectors
        return tuple(d for d in self.detectors if d.label_set == label_set)

    async def refresh(self) -> bool:
        """Reload when any head's status changed since the last look; whether it did."""
        generation = await self.database.run(teaching.generation)
        if generation == self.generation:
            return False
        rows = await self.database.run(teaching.serving_heads)
        classifiers = [(r, n) for r, n in rows if r.kind == "classifier"]
        detectors = [(r, n) for r, n in rows if r.kind == "detector"]
        self.heads = tuple(h for h in (self._load(row, name) for row, name in classifiers) if h)
        loaded = [self._load_detector(row, name) for row, name in detectors]
        self.detectors = tuple(d for d in loaded if d)
        self.generation = generation
        log.info(
            "heads.loaded",
            generation=generation,
            heads=[_named(h) for h in self.heads],
            detectors=[_named(d) for d in self.detectors],
        )
        return True

    async def watch(self, interval_s: float) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # an outage: keep serving what was loaded, look again
                log.warning("heads.refresh_failed", reason=str(exc).splitlines()[0])
            await asyncio.sleep(interval_s)

    def _load(self, row: HeadRecord, label_set: str) -> LoadedHead | None:
        if row.base_model_version != self.model_version:
            self._failed(row.id, "base_model_differs", f"trained on {row.base_model_version}")
            return None
        try:
            weights, bias, thresholds = unpack(row.artifact, row.artifact_sha256, len(row.classes))
        except Exception as exc:  # whatever is wrong with it, it is skipped, never raised
            self._failed(row.id, "broken_artifact", f"{type(exc).__name__}: {exc}")
            return None
        return LoadedHead(
            row.id,
            label_set,
            row.label_set_id,
            row.version,
            tuple(row.classes),
            row.status == "shadow",
            weights,
            bias,
            thresholds,
        )

    def _load_detector(self, row: HeadRecord, label_set: str) -> LoadedDetector | None:
        if row.base_model_version != self.model_version:
            self._failed(row.id, "base_model_differs", f"trained on {row.base_model_version}")
            return None
        if self.patches is None:
            self._failed(row.id, "no_patch_graph", "MODEL_DIR's artifact has no patch graph")
            return None
        try:
            detector = anomaly.unpack(row.artifact, row.artifact_sha256, self.patches)
        except Exception as exc:  # whatever is wrong with it, it is skipped, never raised
            self._failed(row.id, "broken_artifact", f"{type(exc).__name__}: {exc}")
            return None
        return LoadedDetector(
            row.id,
            label_set,
            row.label_set_id,
            row.version,
            row.classes[0] if row.classes else "ok",
            row.status == "shadow",
            detector,
        )

    def answers(self, embedding: np.ndarray | None) -> list[tuple[LoadedHead, HeadAnswer]]:
        """Every serving head's answer for one embedding; a head that fails is skipped."""
        if embedding is None:
            return []
        found = []
        for head in self.heads:
            try:
                found.append((head, head.answer(embedding)))
            except Exception as exc:  # a head must never fail a prediction
                self._failed(head.head_id, "apply_failed", str(exc))
        return found

    def _failed(self, head_id: int, reason: str, detail: str) -> None:
        log.error(
            "head.skipped",
            head_id=head_id,
            reason=reason,
            detail=detail,
        )
        if self.on_failure is not None:
            self.on_failure(reason)


def _named(served: LoadedHead | LoadedDetector) -> str:
    return f"{served.label_set} v{served.version} {'shadow' if served.shadow else 'active'}"


def answer_rows(
    answers: list[tuple[LoadedHead, HeadAnswer]],
    created_at: datetime,
    detected: Sequence[DetectorAnswer] = (),
) -> list[HeadAnswerRecord]:
    """The rows that record a prediction's head and detector answers (its id is set when it is
    inserted). An active detector's heat map is kept with its answer; a shadow's is not."""
    return [*_classifier_rows(answers, created_at), *_detector_rows(detected, created_at)]


def _detector_rows(
    detected: Sequence[DetectorAnswer], created_at: datetime
) -> list[HeadAnswerRecord]:
    return [
        HeadAnswerRecord(
            head_id=d.served.head_id,
            label_set_id=d.served.label_set_id,
            class_name=d.answer.verdict,
            confidence=d.answer.score,
            decided=True,
            shadow=d.served.shadow,
            created_at=created_at,
            region=list(d.answer.region) if d.answer.region else None,
            heat=None if d.served.shadow else d.heat_bytes(),
        )
        for d in detected
    ]


def _classifier_rows(
    answers: list[tuple[LoadedHead, HeadAnswer]], created_at: datetime
) -> list[HeadAnswerRecord]:
    return [
        HeadAnswerRecord(
            head_id=head.head_id,
            label_set_id=head.label_set_id,
            class_name=answer.class_name,
            confidence=answer.confidence,
            decided=answer.decided,
            shadow=answer.shadow,
            created_at=created_at,
        )
        for head, answer in answers
    ]


@dataclass(frozen=True, slots=True)
class VersionQuality:
    head: HeadRecord
    labels: int  # labels given after this version was trained that it answered
    correct: int
    macro_f1: float | None
    decided: int
    decided_correct: int
    beats_active: bool | None  # shadow only: more accurate than the active one on shared labels

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labels if self.labels else None

    @property
    def decided_share(self) -> float | None:
        return self.decided / self.labels if self.labels else None

    @property
    def decided_precision(self) -> float | None:
        return self.decided_correct / self.decided if self.decided else None


class HeadService:
    def __init__(
        self,
        database: Database,
        labels: LabelService,
        registry: HeadRegistry,
        *,
        train_timeout_s: float,
        compare_min_labels: int,
        training_settings: dict[str, str] | None = None,
        concurrency: int = 1,
        max_memory_bytes: int = 3072 << 20,
    ) -> None:
        self.database = database
        self.max_memory_bytes = max_memory_bytes
        self._slots = anyio.CapacityLimiter(concurrency)  # trainings at once, in this process
        self._training: set[str] = set()  # the sets being trained by this process
        self.labels = labels
        self.registry = registry
        self.train_timeout_s = train_timeout_s
        self.compare_min_labels = compare_min_labels
        # What the training process must see as this one does (its database, its model, where
        # heads go), whatever the environment this process was configured from.
        self.training_settings = training_settings or {}

    async def train(
        self,
        set_name: str,
        by: str | None,
        client_gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> HeadRecord:
        """Train the set's next classifier version in a `visinspect head train` child process
        (`_train_in_child`)."""
        current = await self.labels.get(set_name)  # 404 before a process is started
        check_counts(current.counts, list(current.record.classes))  # 422 before one, too
        if importlib.util.find_spec("sklearn") is None:
            raise TrainingUnavailable(
                "this install cannot train heads: scikit-learn (the `model` extra) is not "
                "installed; run `visinspect head train NAME` where it is"
            )
        command = ["head", "train", set_name, "--json"]
        return await self._train_in_child(set_name, "classifier", command, by, client_gone)

    async def train_detector(
        self,
        set_name: str,
        good_class: str,
        prediction_ids: Sequence[int],
        by: str | None,
        client_gone: Callable[[], Awaitable[bool]] | None = None,
        false_reject: float = anomaly.DEFAULT_FALSE_REJECT,
    ) -> HeadRecord:
        """Train the set's next detector version in a `visinspect detector train` child process
        (`_train_in_child`), on the kept images of `prediction_ids`, or of the predictions
        whose latest label is `good_class`; its threshold for `false_reject`."""
        current = await self.labels.get(set_name)  # 404 before a process is started
        if good_class not in current.record.classes:
            raise InvalidLabelSet(
                f"{set_name!r} has no class {good_class!r}: add it (POST /label-sets/"
                f"{set_name}/classes), or name the set's good class"
            )
        if self.registry.patches is None:
            raise TrainingUnavailable(
                "MODEL_DIR's artifact has no patch graph: rebuild it (`visinspect model build`)"
            )
        command = ["detector", "train", "--label-set", set_name, "--good", good_class, "--json"]
        command += ["--false-reject", repr(false_reject)]
        if prediction_ids:
            command += ["--predictions", ",".join(str(i) for i in prediction_ids)]
        return await self._train_in_child(set_name, "detector", command, by, client_gone)

    async def _train_in_child(
        self,
        set_name: str,
        kind: str,
        command: list[str],
        by: str | None,
        client_gone: Callable[[], Awaitable[bool]] | None,
    ) -> HeadRecord:
        """Run `visinspect COMMAND` in a child process: at most `concurrency` at once in this
        process (TrainingBusy beyond), one per set and kind (TrainingInProgress), within
        `max_memory_bytes` of address space, killed when it overruns its time or when
        `client_gone()` says the client left."""
        key = f"{set_name}/{kind}"
        if key in self._training:
            raise TrainingInProgress(
                f"{set_name!r}'s {kind} is being trained by another request; wait for its answer"
            )
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            raise TrainingBusy(
                f"{self._slots.total_tokens:g} training(s) are running (HEAD_TRAIN_CONCURRENCY); "
                "try again when one has finished",
                retry_after_s=30,
            ) from None
        self._training.add(key)
        try:
            full = [sys.executable, "-m", "visinspect.cli", *command]
            stdout, stderr = await self._run(full + (["--by", by] if by else []), client_gone)
        finally:
            self._training.discard(key)
            self._slots.release()
        return await self._trained(stdout, stderr)

    async def _run(
        self, command: list[str], client_gone: Callable[[], Awaitable[bool]] | None
    ) -> tuple[bytes, bytes]:
        """The child's output; the child is killed on a timeout, a client gone or any error."""
        environment = {**os.environ, **self.training_settings}
        output: dict[int, bytes] = {}
        gone, finished = anyio.Event(), anyio.Event()
        try:
            with anyio.fail_after(self.train_timeout_s):
                process = await anyio.open_process(command, env=environment)
                try:
                    _cap_address_space(process.pid, self.max_memory_bytes)
                    async with anyio.create_task_group() as group:

                        async def read(stream: anyio.abc.ByteReceiveStream, key: int) -> None:
                            output[key] = b"".join([chunk async for chunk in stream])

                        assert process.stdout is not None
                        assert process.stderr is not None
                        group.start_soon(read, process.stdout, 1)
                        group.start_soon(read, process.stderr, 2)
                        if client_gone is not None:
                            group.start_soon(
                                _watch, client_gone, gone, finished, group.cancel_scope
                            )
                        await process.wait()
                        finished.set()  # the readers end at their pipes' end, the watch now
                finally:
                    if process.returncode is None:  # timed out, client gone, cancelled
                        process.kill()
                        with anyio.CancelScope(shield=True):
                            await process.wait()
                    await process.aclose()
        except TimeoutError:
            raise RequestTimedOut(
                f"training took longer than {self.train_timeout_s:g} s (HEAD_TRAIN_TIMEOUT_S); "
                "the training process was stopped"
            ) from None
        if gone.is_set():
            raise ClientGone("the client left during training; the training process was stopped")
        return output.get(1, b""), output.get(2, b"")

    async def _trained(self, stdout: bytes, stderr: bytes) -> HeadRecord:
        try:
            result = json.loads(stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            log.error("head.train_failed", stderr=stderr.decode(errors="replace")[-2000:])
            raise VisinspectError("training failed; the server log has its output") from None
        if "error" in result:
            raise _TRAINING_ERRORS.get(result["error"]["code"], VisinspectError)(
                result["error"]["message"]
            )
        return await self.get(int(result["head_id"]))

    async def get(self, head_id: int) -> HeadRecord:
        found = await self.database.run(teaching.head, head_id)
        if found is None:
            raise HeadNotFound(f"no head with id {head_id}")
        return found

    async def set_name(self, head: HeadRecord) -> str:
        return await self.database.run(teaching.label_set_name, head.label_set_id)

    async def versions(
        self, set_name: str, limit: int | None = None, kind: str = "classifier"
    ) -> list[HeadRecord]:
        """The set's versions of `kind`, newest first (at most `limit`)."""
        current = await self.labels.get(set_name)
        return await self.database.run(teaching.heads_of, current.record.id, kind, limit)

    async def events(self, set_name: str) -> list[tuple[HeadEventRecord, str]]:
        """The set's audit trail, classifiers' and detectors' alike, each with its kind."""
        current = await self.labels.get(set_name)
        return await self.database.run(teaching.events_of, current.record.id)

    async def shadow(self, head_id: int, by: str | None) -> HeadRecord:
        """A candidate (or retired) version answers live traffic unseen, beside the active one."""
        head = await self.get(head_id)
        if head.status not in ("candidate", "retired"):
            raise InvalidHeadChange(
                f"head {head_id} is {head.status}: only a candidate or a retired version can be shadowed"
            )
        self._check_base_model(head)
        active = await self.database.run(teaching.active_head, head.label_set_id, head.kind)
        return await self._change(head, "shadow", "shadow", by, None, active)

    async def promote(self, head_id: int, by: str | None) -> HeadRecord:
        """The version becomes the set's active one; the active one before it is retired."""
        head = await self.get(head_id)
        if head.status == "active":
            raise InvalidHeadChange(f"head {head_id} is already active")
        self._check_base_model(head)
        current = await self.database.run(teaching.active_head, head.label_set_id, head.kind)
        return await self._change(head, "active", "promote", by, current, current)

    async def rollback(self, head_id: int, by: str | None) -> HeadRecord:
        """The active version gives way to the one its promotion replaced (retired itself)."""
        head = await self.get(head_id)
        if head.status != "active":
            raise InvalidHeadChange(
                f"head {head_id} is {head.status}: only the active version can be rolled back"
            )
        promotion = await self.database.run(teaching.last_promotion, head.label_set_id, head.kind)
        if (
            promotion is None
            or promotion.action != "promote"
            or promotion.head_id != head.id
            or promotion.replaced_head_id is None
        ):
            raise InvalidHeadChange(
                f"head {head_id} was not promoted over an earlier version (or was rolled back "
                "to): promote the version you want, or retire this one"
            )
        previous = await self.get(promotion.replaced_head_id)
        self._check_base_model(previous)
        return await self._change(previous, "active", "rollback", by, head, head)

    async def retire(self, head_id: int, by: str | None) -> HeadRecord:
        head = await self.get(head_id)
        if head.status == "retired":
            raise InvalidHeadChange(f"head {head_id} is already retired")
        active = await self.database.run(teaching.active_head, head.label_set_id, head.kind)
        return await self._change(head, "retired", "retire", by, None, active)

    def _check_base_model(self, head: HeadRecord) -> None:
        if head.base_model_version != self.registry.model_version:
            raise BaseModelDiffers(
                f"head {head.id} was trained on base model {head.base_model_version}, the "
                f"serving model is {self.registry.model_version}: train a new version"
            )

    async def _change(
        self,
        head: HeadRecord,
        status: str,
        action: str,
        by: str | None,
        replaced: HeadRecord | None,
        active: HeadRecord | None,
    ) -> HeadRecord:
        """Make the change decided on `head`, `replaced` and the set's `active` head as read;
        HeadChangedMeanwhile (409) when any of them changed before the set's lock was taken."""
        now = datetime.now(UTC)
        events = []
        expected = {head.id: head.status}
        if replaced is not None and replaced.id != head.id:
            events.append(_event(replaced, "retire", "retired", by, now, None))
            expected[replaced.id] = replaced.status
        events.append(_event(head, action, status, by, now, replaced.id if replaced else None))
        changed = await self.database.run(
            teaching.change_status,
            head.id,
            status,
            expected,
            active.id if active else None,
            replaced.id if replaced else None,
            events,
        )
        log.info(
            "head.changed",
            head_id=head.id,
            action=action,
            status=status,
            replaced=replaced.id if replaced else None,
            by=by,
        )
        try:  # this process at once; the others (and this one, failing that) within HEADS_REFRESH_S
            await self.registry.refresh()
        except Exception as exc:  # the change is committed: it must not be answered as failed
            log.warning("heads.refresh_failed", reason=str(exc).splitlines()[0] if str(exc) else "")
        return changed

    async def quality(self, set_name: str) -> list[VersionQuality]:
        """Every version that has answered, on the labels given after it was trained. The
        database counts (truth, answer) pairs; the arithmetic runs on those counts in the same
        worker thread: nothing proportional to the labels runs on the event loop."""
        current = await self.labels.get(set_name)
        counted = await self.database.run(teaching.quality_counts, current.record.id, "classifier")
        return await anyio.to_thread.run_sync(_qualities, counted, self.compare_min_labels)

    async def detector_quality(self, set_name: str) -> list[DetectorQuality]:
        """Every detector version that has answered, on the labels given after it was trained:
        a label of the good class is a good part, any other class a defective one."""
        current = await self.labels.get(set_name)
        counted = await self.database.run(teaching.quality_counts, current.record.id, "detector")
        return [_detector_quality(c.head, c.counts) for c in counted]

    async def anomaly_map(self, prediction_id: int, detector_id: int | None = None) -> bytes:
        """The PNG of a detector's heat map on a prediction (of `detector_id`, or its newest
        active detector's), the image's size at most MAP_MAX_PX a side (a page stretches it
        over the image); drawn off the event loop from the kept grid."""
        found = await self.database.run(teaching.kept_heat_map, prediction_id, detector_id)
        if found is None:
            if not await self.database.run(teaching.prediction_exists, prediction_id):
                raise PredictionNotFound(f"no prediction with id {prediction_id}")
            by = "" if detector_id is None else f" by detector {detector_id}"
            raise AnomalyMapNotFound(
                f"prediction {prediction_id} has no heat map{by}: no active detector answered it"
            )
        answer, width, height = found
        assert answer.heat is not None
        scale = min(1.0, MAP_MAX_PX / max(width, height, 1))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        heat = anomaly.heat_from_bytes(answer.heat)
        return await anyio.to_thread.run_sync(anomaly.heat_png, heat, *size)

    async def anomalies(self, set_name: str, limit: int, cursor: str | None) -> NeedsAPerson:
        """The active detector's anomalous answers not labelled yet in the set, most anomalous
        first: what an inspector looks at first. From the start or a previous page's
        `next_cursor` (InvalidCursor for another)."""
        return await self._queue(set_name, "detector", ANOMALY_ORDER, limit, cursor)

    async def queue(self, set_name: str, limit: int, cursor: str | None) -> NeedsAPerson:
        """The active head's "needs a person" answers not labelled yet, least confident first,
        from the start or a previous page's `next_cursor` (InvalidCursor for another)."""
        return await self._queue(set_name, "classifier", QUEUE_ORDER, limit, cursor)

    async def _queue(
        self, set_name: str, kind: str, order: str, limit: int, cursor: str | None
    ) -> NeedsAPerson:
        """A page of the set's active `kind`'s queue (`_QUEUES`: its query), `limit` answers
        and the cursor of the next page, if any."""
        after = decode_cursor(cursor, order) if cursor is not None else None
        current = await self.labels.get(set_name)
        active = await self.database.run(teaching.active_head, current.record.id, kind)
        if active is None:
            what = "head" if kind == "classifier" else kind
            raise InvalidLabelSet(f"{set_name!r} has no active {what}: promote a version first")
        position = None if after is None else (after.confidence or 0.0, after.id)
        answers = await self.database.run(
            _QUEUES[kind], current.record.id, active.id, limit + 1, position
        )
        page = answers[:limit]
        more = len(answers) > limit
        return NeedsAPerson(active, page, encode_cursor(page[-1], order) if more else None)


@dataclass(frozen=True, slots=True)
class DetectorQuality:
    """A detector version on the labels given after it was trained: a false reject is a good
    part it called anomalous, an escape a defective part it let through."""

    head: HeadRecord
    good: int  # labelled good parts it answered
    false_rejects: int
    defective: int  # labelled defective parts it answered
    escapes: int

    @property
    def false_reject_rate(self) -> float | None:
        return self.false_rejects / self.good if self.good else None

    @property
    def escape_rate(self) -> float | None:
        return self.escapes / self.defective if self.defective else None


def _detector_quality(
    head: HeadRecord, counts: list[tuple[str, str, bool, int]]
) -> DetectorQuality:
    good_class = head.classes[0] if head.classes else "ok"
    good = [(verdict, n) for truth, verdict, _, n in counts if truth == good_class]
    defective = [(verdict, n) for truth, verdict, _, n in counts if truth != good_class]
    return DetectorQuality(
        head,
        sum(n for _, n in good),
        sum(n for verdict, n in good if verdict == "anomalous"),
        sum(n for _, n in defective),
        sum(n for verdict, n in defective if verdict == "ok"),
    )


MAP_MAX_PX = 1024  # a heat map PNG's longer side at most (a 28 x 28 grid has no more detail)
QUEUE_ORDER = "needs_a_person"  # what the queue's cursors name: no other page's cursor fits
ANOMALY_ORDER = "most_anomalous"  # the inspection queue's
# Each kind's queue: a classifier's undecided answers, a detector's anomalous ones.
_QUEUES = {"classifier": teaching.undecided, "detector": teaching.anomalous}


@dataclass(frozen=True, slots=True)
class NeedsAPerson:
    head: HeadRecord  # the active version whose answers these are
    answers: list[HeadAnswerRecord]
    next_cursor: str | None


_TRAINING_ERRORS: dict[str, type[VisinspectError]] = {
    "too_few_labels": TooFewLabels,
    "too_few_good_images": TooFewGoodImages,
    "invalid_label_set": InvalidLabelSet,
    "prediction_not_found": PredictionNotFound,
    "invalid_request": InvalidRequest,
    "model_not_ready": TrainingUnavailable,
    "base_model_differs": BaseModelDiffers,
    "label_set_not_found": LabelSetNotFound,
    "training_too_large": TrainingTooLarge,
}


async def _watch(
    client_gone: Callable[[], Awaitable[bool]],
    gone: anyio.Event,
    finished: anyio.Event,
    scope: anyio.CancelScope,
) -> None:
    """Until `finished`: every half second, whether the client has gone; if so, cancel `scope`
    (and so stop the training)."""
    while not finished.is_set():
        if await client_gone():
            gone.set()
            scope.cancel()
            return
        with anyio.move_on_after(0.5):
            await finished.wait()


def _cap_address_space(pid: int, limit: int) -> None:
    """The child's RLIMIT_AS, set from here as it starts (its interpreter takes far longer to
    import than this takes): past it, its allocations fail with MemoryError, which it reports
    as `training_too_large`, instead of the host's memory running out."""
    with contextlib.suppress(ProcessLookupError):  # exited already: its output says why
        resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))


def _event(
    head: HeadRecord, action: str, status: str, by: str | None, at: datetime, replaced: int | None
) -> HeadEventRecord:
    return HeadEventRecord(
        head_id=head.id,
        label_set_id=head.label_set_id,
        action=action,
        from_status=head.status,
        to_status=status,
        replaced_head_id=replaced,
        actor=by,
        created_at=at,
    )


def _qualities(counted: list[teaching.VersionCounts], min_labels: int) -> list[VersionQuality]:
    """Every version's quality from the database's counts (`HeadService.quality`)."""
    return [
        _quality(
            c.head,
            c.counts,
            None if c.shared is None or c.shared[0] < min_labels else c.shared[1] > c.shared[2],
        )
        for c in counted
    ]


def _quality(
    head: HeadRecord, counts: list[tuple[str, str, bool, int]], beats: bool | None
) -> VersionQuality:
    labels = sum(n for *_, n in counts)
    correct = sum(n for t, a, _, n in counts if t == a)
    return VersionQuality(
        head,
        labels,
        correct,
        _macro_f1(counts, list(head.classes)),
        sum(n for _, _, d, n in counts if d),
        sum(n for t, a, d, n in counts if d and t == a),
        beats,
    )


def _macro_f1(counts: list[tuple[str, str, bool, int]], classes: list[str]) -> float | None:
    """The mean over the head's classes present (in truth or answers) of F1, from the counts of
    (truth, answer) pairs; None without labels."""
    if not counts:
        return None
    index = {c: i for i, c in enumerate(classes)}
    other = len(classes)  # a truth or an answer outside the head's classes
    confusion = np.zeros((other + 1, other + 1), dtype=np.int64)
    for truth, answer, _, n in counts:
        confusion[index.get(truth, other), index.get(answer, other)] += n
    tp = np.diag(confusion)[:other]
    fp = confusion[:, :other].sum(axis=0) - tp
    fn = confusion[:other, :].sum(axis=1) - tp
    present = (tp + fp + fn) > 0
    if not present.any():
        return None
    return float(np.mean(2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])))
