"""The ``kiln ui`` application: each view's routes, the static files, the login form, and the guard around them.

Routes (pages, then their JSON; docs/ui.md documents each JSON route):

    GET /                       runs list            GET /api/runs                   (format=csv too)
    GET /runs/{id}              run page             GET /api/runs/{id}, /api/runs/{id}/series
    GET /runs/{id}/artifacts/{name}                  download
    GET /compare?run=A&run=B    compare              GET /api/compare
    GET /models                 gallery              GET /api/models
    GET /models/{name}          model page           GET /api/models/{name}
    GET /models/{name}/{n}      version, Try it      GET /api/models/{name}/{n}, POST .../predict
    POST /models/{name}/{n}/promote|delete           with --allow-writes only
    GET|POST /login             the token form, when the server has a token
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..store import Store
from ..store.series import SeriesCache
from . import compare, models, run, runs
from .config import UiConfig
from .context import Ui, view
from .pages import HttpError, environment, read_form
from .security import COOKIE, Guard, GuardMiddleware, safe_next
from .tryit import RuntimeCache

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


def _login_routes(ui: Ui) -> list[Route]:
    def login_form(request: Request) -> Response:
        if not ui.guard.needs_token:
            return RedirectResponse("/", 303)
        return ui.page(request, "login.html", title="Log in", next=safe_next(request.query_params.get("next")),
                       failed=False)  # fmt: skip

    async def login(request: Request) -> Response:
        if not ui.guard.needs_token:
            return RedirectResponse("/", 303)
        form = await read_form(request)
        target = safe_next(form.get("next"))
        if not ui.guard.token_matches(form.get("token", "")):
            return ui.page(request, "login.html", 401, title="Log in", next=target, failed=True)
        response = RedirectResponse(target, 303)
        response.set_cookie(COOKIE, ui.guard.session or "", httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")  # fmt: skip
        return response

    return [Route("/login", view(ui, login_form), methods=["GET"]), Route("/login", view(ui, login), methods=["POST"])]


def create_app(config: UiConfig, *, store: Store | None = None) -> Starlette:
    """The ASGI app for ``config`` (``store``: an open store to use instead of opening ``config.store``).

    Example:
        >>> app = create_app(UiConfig(store=".kiln"))
        >>> uvicorn.run(app, host="127.0.0.1", port=8765)
    """
    opened = store if store is not None else Store(config.store, create=False, blobs=config.blobs)
    guard = Guard(config)
    ui = Ui(config=config, store=opened, guard=guard, series=SeriesCache(opened),
            runtimes=RuntimeCache(opened, threads=config.threads), env=environment())  # fmt: skip
    routes: list[Any] = [
        *runs.routes(ui), *run.routes(ui), *compare.routes(ui), *models.routes(ui), *_login_routes(ui),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]  # fmt: skip

    async def not_found(request: Request, error: Exception) -> Response:
        status = error.status_code if isinstance(error, HTTPException) else 500
        message = {404: f"there is no page at {request.url.path[:200]!r}.", 405: "that method is not allowed here."}
        return ui.error(request, HttpError(status, message.get(status, "the request failed.")))

    app = Starlette(routes=routes, middleware=[Middleware(GuardMiddleware, guard=guard)],
                    exception_handlers={HTTPException: not_found})  # fmt: skip
    app.state.ui = ui
    return app
