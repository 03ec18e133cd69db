"""Expand/contract migrations: which schema revisions a release may serve against.

A rolling update runs the next release's migrations while the current release still serves. So
every migration says what it does to the releases before it (its module's `phase`):

- `expand`: additive only (new tables, nullable columns or columns with a server default, new
  indexes). Code written before it keeps working; `tests/db/test_migrations.py` rejects a
  destructive statement in one.
- `contract`: removes or tightens something (drops, renames, NOT NULL without a default). Code
  before it must no longer run; it ships a release after the code stopped needing what it removes,
  and may name that release's head as `serves_from = "<revision>"`: releases from that one on
  serve on (so a rollback to the release just before the contract works).

Every migration run (env.py) records in `schema_compatibility` the revision it reached and the
oldest release that may serve against it: the newest contract migration at or below that
revision (or the release it names in `serves_from`). A release whose own head is that revision or a descendant of it serves on, even when the
database's revision is newer than anything it knows; `kubectl rollout undo` works after an expand.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from alembic.script import Script, ScriptDirectory
from sqlalchemy import Connection, delete, insert, inspect, select

from visinspect.db.tables import SchemaCompatibility

Phase = Literal["expand", "contract"]
PHASES: tuple[Phase, ...] = ("expand", "contract")


def phase_of(script: Script) -> Phase:
    phase = getattr(script.module, "phase", None)
    if phase not in PHASES:
        raise RuntimeError(
            f"migration {script.revision} must declare phase = 'expand' or 'contract'"
        )
    return phase  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Lineage:
    """The migrations this release ships: its head and every revision below it."""

    head: str
    revisions: frozenset[str]

    def knows(self, revision: str) -> bool:
        return revision in self.revisions


@functools.cache
def lineage(scripts: ScriptDirectory) -> Lineage:
    heads = scripts.get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"migrations must have exactly one head, found {heads}")
    return Lineage(heads[0], frozenset(s.revision for s in scripts.walk_revisions()))


def oldest_compatible(scripts: ScriptDirectory, revision: str) -> str:
    """The newest contract migration at or below `revision` (or the earlier revision it names in
    `serves_from`): releases whose head is that revision or later can serve."""
    for script in scripts.walk_revisions(base="base", head=revision):  # newest first
        if phase_of(script) == "contract":
            serves_from: str = getattr(script.module, "serves_from", script.revision)
            return serves_from
    raise RuntimeError("the first migration creates the schema: it must be a contract")


def record(connection: Connection, scripts: ScriptDirectory, revision: str | None) -> None:
    """After each migration, in its transaction: what the schema now is and who may serve
    against it. The rows of the revisions passed on the way stay: a release checks its readiness
    with two statements (the revision, then its row), and a migration may commit between them;
    with one row rewritten each time it found none and turned unready mid-rollout (seen once in
    969 probes of `make containers`). A revision's row is the same whenever it is written."""
    if revision is None or not inspect(connection).has_table(SchemaCompatibility.__tablename__):
        return  # downgraded below the revision that creates the table
    connection.execute(delete(SchemaCompatibility).where(SchemaCompatibility.revision == revision))
    connection.execute(
        insert(SchemaCompatibility).values(
            revision=revision,
            oldest_compatible_revision=oldest_compatible(scripts, revision),
            recorded_at=datetime.now(UTC),
        )
    )


def newer_but_compatible(connection: Connection, known: Lineage, revision: str) -> bool:
    """True when `revision` (unknown to this release) was recorded as servable by it."""
    if known.knows(revision) or not inspect(connection).has_table(
        SchemaCompatibility.__tablename__
    ):
        return False
    row = connection.execute(
        select(SchemaCompatibility.oldest_compatible_revision).where(
            SchemaCompatibility.revision == revision
        )
    ).first()
    return row is not None and known.knows(row[0])
