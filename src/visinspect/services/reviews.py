"""Human review: a person's verdict on a prediction, and the accuracy the verdicts measure.

A review is only ever added. The latest review of a prediction counts; the earlier ones are its
history. Accuracy, per class and per day, and the confusions are counted in SQL over the latest
reviews (`db/repository.latest_review_groups`), summed here, each figure with the number of
reviews behind it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal

from visinspect.db import repository
from visinspect.db.repository import ReviewGroup
from visinspect.db.session import Database
from visinspect.db.tables import PredictionRecord, ReviewRecord
from visinspect.errors import InvalidReview, PredictionNotFound, UnknownClass
from visinspect.filters import HistoryFilter
from visinspect.text import has_control_characters

Verdict = Literal["correct", "wrong"]


@dataclass(frozen=True, slots=True)
class Accuracy:
    reviewed: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.reviewed if self.reviewed else None


@dataclass(frozen=True, slots=True)
class Confusion:
    predicted_class_id: int
    predicted_class_name: str
    true_class_id: int
    true_class_name: str
    count: int


@dataclass(frozen=True, slots=True)
class Quality:
    overall: Accuracy
    by_class: list[tuple[str, Accuracy]]  # predicted class; most reviewed first
    by_day: list[tuple[date, Accuracy]]  # UTC day of the prediction; oldest first
    confusions: list[Confusion]  # most frequent first


class ReviewService:
    def __init__(self, database: Database, labels: tuple[str, ...]) -> None:
        self.database = database
        self.labels = labels

    async def review(
        self,
        prediction_id: int,
        verdict: Verdict,
        true_class_id: int | None,
        note: str | None,
        reviewer: str | None,
    ) -> ReviewRecord:
        """Record a verdict; 404 for an unknown prediction, 422 for a verdict that contradicts
        itself or names a class the model does not have."""
        if true_class_id is not None and not 0 <= true_class_id < len(self.labels):
            raise UnknownClass(
                f"true_class_id must be a class of the model, 0..{len(self.labels) - 1}"
            )
        if verdict == "wrong" and true_class_id is None:
            raise InvalidReview("a `wrong` verdict needs true_class_id: the class the image shows")
        if note is not None and has_control_characters(note, allow="\n\r\t"):
            raise InvalidReview("note contains control characters")
        # Predictions are only ever inserted: the one read here is the one the review is of.
        prediction = await self.database.run(repository.get_prediction, prediction_id)
        if prediction is None:
            raise PredictionNotFound(f"no prediction with id {prediction_id}")
        review = _review_of(prediction, verdict, true_class_id, note or None, reviewer)
        return await self.database.run(repository.add_review, review)

    async def history(
        self, prediction_id: int, limit: int, before: int | None = None
    ) -> list[ReviewRecord]:
        """A page of a prediction's reviews, newest first (404 for an unknown prediction): any
        number of reviews may be posted, so they are never all read at once."""
        reviews = await self.database.run(repository.reviews_of, prediction_id, limit, before)
        if reviews is None:
            raise PredictionNotFound(f"no prediction with id {prediction_id}")
        return reviews

    async def quality(self, where: HistoryFilter, top_classes: int, top_confusions: int) -> Quality:
        """Accuracy by the latest review of each prediction: overall, per predicted class (most
        reviewed first), per UTC day of the prediction, and the most frequent confusions."""
        groups = await self.database.run(repository.latest_review_groups, where.validated())
        by_class: Counter[str] = Counter()
        by_day: Counter[date] = Counter()
        right_by_class: Counter[str] = Counter()
        right_by_day: Counter[date] = Counter()
        confused: Counter[tuple[int, str, int]] = Counter()
        for group in groups:
            right = group.count if group.verdict == "correct" else 0
            by_class[group.predicted_class_name] += group.count
            by_day[group.day] += group.count
            right_by_class[group.predicted_class_name] += right
            right_by_day[group.day] += right
            if group.verdict == "wrong":
                confused[_confusion_key(group)] += group.count
        classes = sorted(by_class.items(), key=lambda item: (-item[1], item[0]))[:top_classes]
        confusions = sorted(confused.items(), key=lambda item: (-item[1], item[0][1], item[0][2]))
        return Quality(
            Accuracy(by_class.total(), right_by_class.total()),
            [(name, Accuracy(n, right_by_class[name])) for name, n in classes],
            [(day, Accuracy(by_day[day], right_by_day[day])) for day in sorted(by_day)],
            [
                Confusion(predicted, name, true, self.labels[true], n)
                for (predicted, name, true), n in confusions[:top_confusions]
            ],
        )

    def class_name(self, class_id: int) -> str:
        return self.labels[class_id]


def _confusion_key(group: ReviewGroup) -> tuple[int, str, int]:
    return group.predicted_class_id, group.predicted_class_name, group.true_class_id


def _review_of(
    prediction: PredictionRecord,
    verdict: Verdict,
    true_class_id: int | None,
    note: str | None,
    reviewer: str | None,
) -> ReviewRecord:
    """The review to add, or InvalidReview when the verdict contradicts the predicted class."""
    predicted = prediction.class_id
    if verdict == "correct" and true_class_id not in (None, predicted):
        raise InvalidReview(
            f"a `correct` verdict confirms the predicted class ({predicted}); "
            "send `wrong` with the class the image shows"
        )
    if verdict == "wrong" and true_class_id == predicted:
        raise InvalidReview("a `wrong` verdict names a class other than the predicted one")
    return ReviewRecord(
        prediction_id=prediction.id,
        created_at=datetime.now(UTC),
        verdict=verdict,
        predicted_class_id=predicted,
        predicted_class_name=prediction.class_name,
        prediction_created_at=prediction.created_at,
        true_class_id=predicted if true_class_id is None else true_class_id,
        note=note,
        reviewer=reviewer,
    )
