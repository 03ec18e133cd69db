"""Liveness (the process answers) and readiness (it can do its job: model, database, schema)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from visinspect.api.deps import ReadinessServiceDep
from visinspect.api.schemas import CheckResult, LivenessOut, ReadinessOut

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
async def ready(request: Request, readiness: ReadinessServiceDep) -> JSONResponse:
    result = await readiness.check()
    if not result.checks["database"].ok:
        request.app.state.metrics.database_errors.inc()
    body = ReadinessOut(
        status="not_ready" if result.failing else "ready",
        failing=result.failing,
        checks={
            name: CheckResult(status="ok" if check.ok else "fail", detail=check.detail)
            for name, check in result.checks.items()
        },
        model_name=result.model.name,
        model_version=result.model.version,
        backend=result.model.backend,
        precision=result.model.precision,
        schema_revision=result.schema_revision,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=503 if result.failing else 200)
