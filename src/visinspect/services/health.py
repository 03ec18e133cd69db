"""Readiness: can this process do its job right now (model, database, schema)?

`/health` needs no key and is never refused for overload, so what it costs is bounded here: one
check at a time per process, its answer reused for READINESS_CACHE_S (a flood of probes costs
the database one query a second), and a database failure described tersely (the driver's text,
which names hosts, users and databases, goes to the log only).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog

from visinspect.db.schema import schema_state
from visinspect.db.session import Database
from visinspect.errors import DatabaseUnavailable
from visinspect.inference.classifier import ModelIdentity

log = structlog.get_logger("visinspect.health")

READINESS_CACHE_S = 1.0
DATABASE_UNAVAILABLE = "the database is unavailable (the service's log says why)"


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
    def __init__(
        self,
        database: Database,
        model: ModelIdentity,
        create_all_mode: bool,
        model_detail: str | None = None,
    ) -> None:
        self.database = database
        self.model = model
        self.model_detail = model_detail  # how MODEL_PRECISION=auto chose, when it did
        self.create_all_mode = create_all_mode
        self._lock = asyncio.Lock()
        self._last: tuple[float, Readiness] | None = None

    async def check(self) -> Readiness:
        """The latest answer if it is younger than READINESS_CACHE_S; otherwise a new one, asked
        once for every caller waiting meanwhile."""
        async with self._lock:
            if self._last is not None and time.monotonic() - self._last[0] < READINESS_CACHE_S:
                return self._last[1]
            readiness = await self._check()
            self._last = (time.monotonic(), readiness)
            return readiness

    async def _check(self) -> Readiness:
        """The model is loaded whenever this service exists; the database and schema are asked."""
        checks = {"model": Check(ok=True, detail=self.model_detail)}
        revision: str | None = None
        try:
            revision, problem = await self.database.run(schema_state, self.create_all_mode)
        except DatabaseUnavailable as exc:
            log.warning("health.database_unavailable", reason=exc.message)
            checks["database"] = Check(ok=False, detail=DATABASE_UNAVAILABLE)
            checks["schema"] = Check(ok=False, detail="unknown: database unavailable")
        else:
            checks["database"] = Check(ok=True)
            checks["schema"] = Check(ok=problem is None, detail=problem)
        return Readiness(checks, self.model, revision)
