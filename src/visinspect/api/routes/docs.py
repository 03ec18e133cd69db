"""/docs served entirely from this process: Swagger UI 5's files come from the `fastapi-swagger`
package, not a CDN, so the page works on machines without internet access (the former bundle, UI
4.15 from 2022, could not render FastAPI's OpenAPI 3.1 at all). The page is ours, not FastAPI's:
it starts Swagger UI from a file (`web/docs.js`) instead of an inline script, so its Content
Security Policy allows scripts and styles from this origin only (no 'unsafe-inline')."""

from __future__ import annotations

from html import escape
from importlib import resources

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
SWAGGER_UI = resources.files("fastapi_swagger").joinpath("resources")
router = APIRouter(include_in_schema=False)

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" href="{assets}/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi_url}"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script>
</body>
</html>
"""


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return HTMLResponse(
        _PAGE.format(
            title=escape(f"{request.app.title} - API docs"),
            assets=ASSETS,
            openapi_url=escape(request.app.openapi_url or "/openapi.json"),
        )
    )


def mount_docs(app: FastAPI) -> None:
    app.mount(ASSETS, StaticFiles(directory=str(SWAGGER_UI)), name="docs-assets")
    app.include_router(router)
