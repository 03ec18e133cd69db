"""Label sets and labels: a team's own classes, and a person's class for a prediction.

Classes are only ever added to a set (a class that has labels keeps its name and its place);
labels are only ever added, and a prediction's latest label in a set counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from visinspect.db import teaching
from visinspect.db.session import Database
from visinspect.db.tables import LabelRecord, LabelSetRecord
from visinspect.errors import InvalidLabelSet, LabelSetNotFound, PredictionNotFound
from visinspect.text import has_control_characters, has_invisible_characters

# A set's name goes in URLs and folder names: lower case, digits, '-', '_'.
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_CLASSES = 1000


@dataclass(frozen=True, slots=True)
class LabelSet:
    record: LabelSetRecord
    counts: dict[str, int]  # predictions per class by their latest label

    @property
    def labelled(self) -> int:
        return sum(self.counts.values())


class LabelService:
    def __init__(self, database: Database, max_sets: int = 200) -> None:
        self.database = database
        self.max_sets = max_sets

    async def create(
        self, name: str, classes: list[str], description: str | None, by: str | None
    ) -> LabelSet:
        if not _NAME.match(name):
            raise InvalidLabelSet(
                f"{name!r} is not a label set name: 1-64 of a-z, 0-9, '-', '_', starting with a "
                "letter or digit"
            )
        checked = _checked_classes(classes, [])
        if len(checked) < 2:
            raise InvalidLabelSet("a label set needs at least two classes")
        if description is not None and has_control_characters(description, allow="\n\r\t"):
            raise InvalidLabelSet("description contains control characters")
        record = LabelSetRecord(
            name=name,
            description=description or None,
            classes=checked,
            created_at=datetime.now(UTC),
            created_by=by,
        )
        if not await self.database.run(teaching.create_label_set, record, self.max_sets):
            raise InvalidLabelSet(f"a label set named {name!r} exists: add classes to it instead")
        return LabelSet(record, dict.fromkeys(checked, 0))

    async def page(self, limit: int, after: str | None = None) -> list[LabelSet]:
        """At most `limit` sets by name, from after the set named `after`."""
        found = await self.database.run(teaching.with_counts, None, limit, after)
        return [_counted(r, n) for r, n in found]

    async def get(self, name: str) -> LabelSet:
        found = await self.database.run(teaching.with_counts, name)
        if not found:
            raise LabelSetNotFound(f"no label set named {name!r}")
        return _counted(*found[0])

    async def add_classes(self, name: str, classes: list[str]) -> LabelSet:
        """Append classes; the existing ones stay as they are, in their order (never renamed or
        dropped: labels name them)."""
        current = await self.get(name)
        _checked_classes(classes, list(current.record.classes))  # a 422 before any lock

        def merge(existing: list[str]) -> list[str]:  # under the set's lock, on what is stored
            return _checked_classes(classes, existing)

        record = await self.database.run(teaching.add_classes, current.record.id, merge)
        return _counted(record, current.counts)

    async def label(
        self, prediction_id: int, set_name: str, class_name: str, labeller: str | None
    ) -> LabelRecord:
        current = await self.get(set_name)
        if class_name not in current.record.classes:
            raise InvalidLabelSet(
                f"{class_name!r} is not a class of {set_name!r} ({', '.join(current.record.classes)}): "
                "add it first (POST /label-sets/{name}/classes)"
            )
        if not await self.database.run(teaching.prediction_exists, prediction_id):
            raise PredictionNotFound(f"no prediction with id {prediction_id}")
        label = LabelRecord(
            label_set_id=current.record.id,
            prediction_id=prediction_id,
            class_name=class_name,
            labeller=labeller,
            created_at=datetime.now(UTC),
        )
        await self.database.run(teaching.add, label)
        return label


def _checked_classes(new: list[str], existing: list[str]) -> list[str]:
    merged = list(existing)
    for name in new:
        if not name.strip() or name != name.strip() or len(name) > 64:
            raise InvalidLabelSet(f"{name!r} is not a class name: 1-64 characters, no edge spaces")
        if has_invisible_characters(name):
            raise InvalidLabelSet(
                "a class name contains control, format or lone surrogate characters (e.g. a "
                "bidi override or a zero-width joiner)"
            )
        if name not in merged:
            merged.append(name)
    if len(merged) > MAX_CLASSES:
        raise InvalidLabelSet(f"a label set holds at most {MAX_CLASSES} classes")
    return merged


def _counted(record: LabelSetRecord, counts: dict[str, int]) -> LabelSet:
    return LabelSet(record, {c: counts.get(c, 0) for c in record.classes})
