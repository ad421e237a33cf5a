"""The browser dashboard: `/` serves the page, `/static/*` its scripts, styles and vendored libraries.

`static/index.html`; the vendored libraries are listed in `static/vendor/README.md`. Plain files, no
build step; the page talks to the JSON API and the WebSocket.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.staticfiles import PathLike
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
INDEX_FILE = STATIC_DIR / "index.html"

# The page and its modules change with the service: make browsers revalidate instead of guessing.
_NO_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter(tags=["dashboard"])


@router.get("/", include_in_schema=False)
async def dashboard_index() -> FileResponse:
    """The single page; it routes between the runs list and a run's detail with the URL fragment."""
    return FileResponse(INDEX_FILE, media_type="text/html", headers=_NO_CACHE)


class _RevalidatedStaticFiles(StaticFiles):
    """StaticFiles that asks browsers to revalidate (ETag / Last-Modified) on every load."""

    def file_response(
        self, full_path: PathLike, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(_NO_CACHE)
        return response


def install_dashboard(app: FastAPI) -> None:
    """Serve the dashboard page at `/` and its files under `/static`; a second call changes nothing."""
    if getattr(app.state, "dashboard_installed", False):
        return
    app.state.dashboard_installed = True
    app.include_router(router)
    app.mount("/static", _RevalidatedStaticFiles(directory=STATIC_DIR), name="static")
