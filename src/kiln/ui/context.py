"""The state one ``kiln ui`` process shares between its views, and the wrapper that turns a view's failure into a
clear 4xx page (or JSON body on ``/api/``) instead of a traceback."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from jinja2 import Environment
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from .. import __version__
from ..store import Store, VerifyReport
from ..store.series import SeriesCache
from .config import UiConfig
from .pages import HttpError, error_status
from .security import Guard
from .tryit import RuntimeCache

__all__ = ["Ui", "json_response", "view"]

logger = logging.getLogger(__name__)

Endpoint = Callable[[Request], Response] | Callable[[Request], Awaitable[Response]]


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: they travel as null (charts mark the steps separately)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def json_response(data: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(_clean(data), option=orjson.OPT_SERIALIZE_NUMPY), status, media_type="application/json"
    )


@dataclass
class Ui:
    """The store, settings, guard, caches and templates of one server process."""

    config: UiConfig
    store: Store
    guard: Guard
    series: SeriesCache
    runtimes: RuntimeCache
    env: Environment
    verified: dict[str, tuple[float, VerifyReport]] = field(default_factory=dict)  # see models.version_impl

    def page(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(
            request=request, path=request.url.path, kiln_version=__version__, store_path=str(self.store.path),
            writes=self.config.allow_writes, csrf=self.guard.csrf, **context,
        )  # fmt: skip
        return HTMLResponse(html, status)

    def error(self, request: Request, error: Exception) -> Response:
        status, message = error_status(error)
        if status >= 500:
            logger.error("%s %s failed: %s", request.method, request.url.path[:200], error,
                         exc_info=not isinstance(error, HttpError))  # fmt: skip
        if request.url.path.startswith("/api/"):
            return json_response({"error": message}, status)
        title = {400: "Bad request", 401: "Token needed", 403: "Refused", 404: "Not found"}.get(status, "Error")
        return self.page(request, "error.html", status, title=title, code=status, message=message)


def view(ui: Ui, function: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """Run ``function`` (sync ones in the thread pool: the store's reads block) and answer its failures as pages."""

    async def endpoint(request: Request) -> Response:
        try:
            if inspect.iscoroutinefunction(function):
                return await function(request)
            return await run_in_threadpool(function, request)  # type: ignore[arg-type]
        except Exception as error:
            return ui.error(request, error)

    endpoint.__name__ = getattr(function, "__name__", "endpoint")
    return endpoint
