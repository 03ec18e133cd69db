"""Human review: a person's verdict on a prediction, and the accuracy the verdicts measure.

A review is only ever added. The latest review of a prediction counts; the earlier ones are its
history. Accuracy, per class and per day, and the confusions are counted in SQL over the latest
reviews (`db/repository.quality_counts`), each figure with the number of reviews behind it.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal

from sqlalchemy.orm import Session

from visinspect.db import repository
from visinspect.db.models import ReviewRecord
from visinspect.db.session import Database
from visinspect.errors import InvalidReview, PredictionNotFound, UnknownClass
from visinspect.services.history import HistoryFilter

Verdict = Literal["correct", "wrong"]
_ALLOWED_CONTROLS = {"\n", "\r", "\t"}


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
        if note is not None and any(
            unicodedata.category(c) == "Cc" and c not in _ALLOWED_CONTROLS for c in note
        ):
            raise InvalidReview("note contains control characters")
        return await self.database.run(
            _add, prediction_id, verdict, true_class_id, note or None, reviewer
        )

    async def history(self, prediction_id: int) -> list[ReviewRecord]:
        """Every review of a prediction, newest first (404 for an unknown prediction)."""
        reviews = await self.database.run(_reviews_of, prediction_id)
        if reviews is None:
            raise PredictionNotFound(f"no prediction with id {prediction_id}")
        return reviews

    async def quality(self, where: HistoryFilter, top_classes: int, top_confusions: int) -> Quality:
        counts = await self.database.run(
            repository.quality_counts, where.to_query(), top_classes, top_confusions
        )
        return Quality(
            Accuracy(counts.reviewed, counts.correct),
            [(name, Accuracy(n, ok)) for name, n, ok in counts.by_class],
            [(date.fromisoformat(d), Accuracy(n, ok)) for d, n, ok in counts.by_day],
            [
                Confusion(predicted, name, true, self.labels[true], n)
                for predicted, name, true, n in counts.confusions
            ],
        )

    def class_name(self, class_id: int) -> str:
        return self.labels[class_id]


def _add(
    session: Session,
    prediction_id: int,
    verdict: Verdict,
    true_class_id: int | None,
    note: str | None,
    reviewer: str | None,
) -> ReviewRecord:
    prediction = repository.get_prediction(session, prediction_id)
    if prediction is None:
        raise PredictionNotFound(f"no prediction with id {prediction_id}")
    predicted = prediction.class_id
    if verdict == "correct" and true_class_id not in (None, predicted):
        raise InvalidReview(
            f"a `correct` verdict confirms the predicted class ({predicted}); "
            "send `wrong` with the class the image shows"
        )
    if verdict == "wrong" and true_class_id == predicted:
        raise InvalidReview("a `wrong` verdict names a class other than the predicted one")
    review = ReviewRecord(
        prediction_id=prediction_id,
        created_at=datetime.now(UTC),
        verdict=verdict,
        predicted_class_id=predicted,
        predicted_class_name=prediction.class_name,
        prediction_created_at=prediction.created_at,
        true_class_id=predicted if true_class_id is None else true_class_id,
        note=note,
        reviewer=reviewer,
    )
    return repository.add_review(session, review)


def _reviews_of(session: Session, prediction_id: int) -> list[ReviewRecord] | None:
    if repository.get_prediction(session, prediction_id) is None:
        return None
    return repository.reviews_of(session, prediction_id)
