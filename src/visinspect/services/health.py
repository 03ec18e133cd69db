"""Readiness: can this process do its job right now (model, database, schema)?"""

from __future__ import annotations

from dataclasses import dataclass

from visinspect.db.schema import schema_state
from visinspect.db.session import Database
from visinspect.errors import DatabaseUnavailable
from visinspect.inference.classifier import ModelIdentity


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Readiness:
    checks: dict[str, Check]  # model, database, schema
    model: ModelIdentity
    schema_revision: str | None

    @property
    def failing(self) -> list[str]:
        return [name for name, check in self.checks.items() if not check.ok]


class ReadinessService:
    def __init__(self, database: Database, model: ModelIdentity, create_all_mode: bool) -> None:
        self.database = database
        self.model = model
        self.create_all_mode = create_all_mode

    async def check(self) -> Readiness:
        """The model is loaded whenever this service exists; the database and schema are asked."""
        checks = {"model": Check(ok=True)}
        revision: str | None = None
        try:
            revision, problem = await self.database.run(schema_state, self.create_all_mode)
        except DatabaseUnavailable as exc:
            checks["database"] = Check(ok=False, detail=exc.message)
            checks["schema"] = Check(ok=False, detail="unknown: database unavailable")
        else:
            checks["database"] = Check(ok=True)
            checks["schema"] = Check(ok=problem is None, detail=problem)
        return Readiness(checks, self.model, revision)
