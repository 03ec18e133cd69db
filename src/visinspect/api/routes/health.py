"""Liveness (the process answers) and readiness (it can do its job: model, database, schema)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from visinspect.api.deps import DatabaseDep, SettingsDep
from visinspect.api.schemas import CheckResult, LivenessOut, ReadinessOut
from visinspect.db.schema import current_revision, schema_problem
from visinspect.errors import DatabaseUnavailable

router = APIRouter(tags=["health"])


@router.get("/health/live", response_model=LivenessOut, summary="Liveness: the process is up")
async def live() -> LivenessOut:
    """Touches nothing else, so an orchestrator never restarts a process for a database outage."""
    return LivenessOut()


@router.get(
    "/health",
    response_model=ReadinessOut,
    summary="Readiness: model loaded, database reachable, schema at the Alembic head",
    responses={503: {"model": ReadinessOut, "description": "A check failed; `checks` names it"}},
)
async def ready(request: Request, database: DatabaseDep, settings: SettingsDep) -> JSONResponse:
    runner = getattr(request.app.state, "runner", None)
    checks: dict[str, CheckResult] = {
        "model": CheckResult(status="ok")
        if runner is not None
        else CheckResult(status="fail", detail="model not loaded"),
    }
    revision: str | None = None
    try:
        revision, problem = await database.run(_schema_state, settings.database_create_all)
        checks["database"] = CheckResult(status="ok")
        checks["schema"] = (
            CheckResult(status="ok")
            if problem is None
            else CheckResult(status="fail", detail=problem)
        )
    except DatabaseUnavailable as exc:
        request.app.state.metrics.database_errors.inc()
        checks["database"] = CheckResult(status="fail", detail=exc.message)
        checks["schema"] = CheckResult(status="fail", detail="unknown: database unavailable")
    failing = [name for name, check in checks.items() if check.status != "ok"]
    ok = not failing
    body = ReadinessOut(
        status="ready" if ok else "not_ready",
        failing=failing,
        checks=checks,
        model_name=runner.classifier.model_name if runner else None,
        model_version=runner.classifier.model_version if runner else None,
        backend=runner.classifier.backend_name if runner else None,
        schema_revision=revision,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ok else 503)


def _schema_state(session: Session, create_all_mode: bool) -> tuple[str | None, str | None]:
    connection = session.connection()
    revision = None if create_all_mode else current_revision(connection)
    return revision, schema_problem(connection, create_all_mode)
