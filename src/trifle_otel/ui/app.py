"""The web UI as a Starlette application: ``create_app(config)``.

``trifle-otel ui`` serves it alone; the sidecar mounts the same application.  Every route
is read-only (GET and HEAD); anything else is answered 405.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..config import Config
from ..errors import ConfigError, NotFoundError, StoreError, TrifleError
from . import api, pages
from .auth import Credentials, Guard, is_loopback
from .context import HERE, UI
from .sources import StoreMissing


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _error(request: Request, status: int, title: str, message: str) -> Response:
    if _is_api(request):
        return api.json_response({"error": message}, status)
    ui: UI = request.app.state.ui
    return ui.render(request, "error.html", status=status, title=title, message=message)


def _trifle_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, StoreMissing):
        return _error(request, 503, "Nothing stored here yet", str(exc))
    if isinstance(exc, NotFoundError):
        return _error(request, 404, "Not found", str(exc))
    if isinstance(exc, StoreError):
        return _error(request, 503, "The store cannot be read", str(exc))
    if isinstance(exc, ConfigError):
        return _error(request, 400, "Cannot show that", str(exc))
    return _error(request, 500, "Error", str(exc))


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    titles = {404: "Not found", 405: "Read-only"}
    messages = {404: f"there is no page at {request.url.path[:200]}",
                405: "this UI only reads: no page takes a write"}
    response = _error(request, exc.status_code, titles.get(exc.status_code, "Error"),
                      messages.get(exc.status_code, str(exc.detail)))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def routes() -> list[Any]:
    get = ["GET"]
    return [
        Route("/", pages.executions, methods=get, name="executions"),
        Route("/executions/{reference}", pages.execution, methods=get, name="execution"),
        Route("/executions/{reference}/lines", pages.execution_lines, methods=get, name="execution_lines"),
        Route("/executions/{reference}/artifacts/{name}", pages.artifact, methods=get, name="artifact"),
        Route("/running", pages.running, methods=get, name="running"),
        Route("/stats", pages.stats_index, methods=get, name="stats"),
        Route("/stats/{key:path}", pages.stats_key, methods=get, name="stats_key"),
        Route("/dashboards/{id}", pages.dashboard, methods=get, name="dashboard"),
        Route("/api/executions", api.executions, methods=get),
        Route("/api/executions/{reference}", api.execution, methods=get),
        Route("/api/running", api.running, methods=get),
        Route("/api/stats/keys", api.stats_keys, methods=get),
        Route("/api/stats/{key:path}", api.stats_values, methods=get),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]


def create_app(config: Config, *, listen: str | None = None, clock: Callable[[], datetime] | None = None) -> Any:
    """The UI over the configured stores (opened on first use, never created).

    ``listen`` is where it will be served (default ``config.ui_listen``): on a loopback
    address it answers only requests addressed to a loopback name.
    """
    from .server import parse_listen

    host, _ = parse_listen(listen or config.ui_listen)
    ui = UI(config, clock=clock)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        ui.close()

    app = Starlette(
        routes=routes(),
        exception_handlers={TrifleError: _trifle_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.ui = ui
    credentials = Credentials(config.ui_token, config.ui_basic_auth)
    return Guard(app, credentials, loopback_only=is_loopback(host))


__all__ = ["create_app", "ConfigError"]
