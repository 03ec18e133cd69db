"""The inspection page at `/`, its script and style at `/static`: files from the package, no CDN."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB = resources.files("visinspect").joinpath("web")
router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(str(WEB.joinpath("index.html")), media_type="text/html")


def mount_ui(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=str(WEB)), name="static")
    app.include_router(router)
