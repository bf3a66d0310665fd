"""The run list: ``GET /`` (page), ``GET /api/runs`` (JSON, or CSV with ``format=csv``).

Query parameters (all optional): ``q`` text in the name or the start of the id, ``status``, ``tag`` (``key`` or
``key=value``), ``sort`` (start, name, status, duration or ``metric:<name>``), ``order`` (asc or desc), ``page``
(from 1), ``per`` (runs per page, up to 200), ``metric`` (a column; repeat it, or separate names by commas).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..store.runs import REPORTED_STATUSES
from ..store.views import MAX_PAGE, RunPage, RunQuery, run_page
from .context import Ui, json_response, view
from .pages import HttpError, as_int, csv_text, natsorted

__all__ = ["parse_run_query", "routes", "runs_impl"]

_PARAMS = ("q", "status", "tag", "sort", "order", "page", "per", "metric", "format")


def parse_run_query(params: QueryParams | Mapping[str, Any]) -> RunQuery:
    """The :class:`RunQuery` a request's parameters ask for; 400 (HttpError) naming a bad one."""
    getlist = params.getlist if isinstance(params, QueryParams) else lambda key: [params[key]] if key in params else []
    unknown = sorted(set(params.keys()) - set(_PARAMS))
    if unknown:
        raise HttpError(400, f"unknown query parameter {unknown[0][:40]!r}; allowed: {', '.join(_PARAMS)}.")
    status = params.get("status") or None
    if status is not None and status not in REPORTED_STATUSES:
        raise HttpError(400, f"status must be one of {', '.join(REPORTED_STATUSES)}; got {status[:40]!r}.")
    order = params.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise HttpError(400, f"order must be 'asc' or 'desc'; got {order[:40]!r}.")
    per = as_int(params.get("per"), "per", default=50, low=1, high=MAX_PAGE)
    page = as_int(params.get("page"), "page", default=1, low=1, high=10**7)
    columns = tuple(dict.fromkeys(k.strip() for value in getlist("metric") for k in value.split(",") if k.strip()))
    return RunQuery(
        status=status, tag=(params.get("tag") or "").strip() or None, text=(params.get("q") or "").strip() or None,
        sort=params.get("sort") or "start", descending=order == "desc", offset=(page - 1) * per, limit=per,
        metrics=columns,
    )  # fmt: skip


def runs_impl(ui: Ui, query: RunQuery) -> RunPage:
    """The page of runs ``query`` selects (filtered, sorted and cut on the database)."""
    return run_page(ui.store, query)


def _page_links(params: QueryParams, page: RunPage) -> dict[str, Any]:
    base = [(k, v) for k, v in params.multi_items() if k != "page"]
    number = page.offset // page.limit + 1
    last = max(1, -(-page.total // page.limit))

    def link(n: int) -> str:
        return "/?" + urlencode([*base, ("page", str(n))])

    return {"number": number, "last": last, "previous": link(number - 1) if number > 1 else None,
            "next": link(number + 1) if number < last else None}  # fmt: skip


def _sort_links(params: QueryParams, query: RunQuery, columns: tuple[str, ...]) -> dict[str, str]:
    """For each sortable column, the link that sorts by it (descending first; again: the other way)."""
    base = [(k, v) for k, v in params.multi_items() if k not in ("sort", "order", "page")]
    links = {}
    for sort in ("start", "name", "status", "duration", *(f"metric:{c}" for c in columns)):
        order = ("asc" if query.descending else "desc") if query.sort == sort else "desc"
        links[sort] = "/?" + urlencode([*base, ("sort", sort), ("order", order)])
    return links


def _row_dict(row: Any, now: float) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "status": row.status, "start_time": row.start_time,
            "end_time": row.end_time, "duration": row.duration(now), "tags": row.tags,
            "latest": row.latest}  # fmt: skip


def routes(ui: Ui) -> list[BaseRoute]:
    def runs_page(request: Request) -> Response:
        query = parse_run_query(request.query_params)
        page = runs_impl(ui, query)
        now = time.time()
        return ui.page(
            request, "runs.html", title="Runs", page=page, query=query, now=now, statuses=REPORTED_STATUSES,
            links=_page_links(request.query_params, page), sorts=_sort_links(request.query_params, query, page.columns),
            chosen=",".join(query.metrics), empty_store=page.total == 0 and not _filtered(query),
        )  # fmt: skip

    def runs_api(request: Request) -> Response:
        query = parse_run_query(request.query_params)
        page = runs_impl(ui, query)
        now = time.time()
        if request.query_params.get("format", "json") == "csv":
            header = ["id", "name", "status", "start_time", "end_time", "duration_s", *page.columns, "tags"]
            rows = ([r.id, r.name, r.status, r.start_time, r.end_time, round(r.duration(now), 3),
                     *(r.latest.get(c) for c in page.columns), ";".join(f"{k}={v}" for k, v in r.tags.items())]
                    for r in page.runs)  # fmt: skip
            return Response(csv_text(header, rows), media_type="text/csv; charset=utf-8")
        if request.query_params.get("format", "json") != "json":
            raise HttpError(400, "format must be 'json' or 'csv'.")
        return json_response({"total": page.total, "offset": page.offset, "limit": page.limit,
                              "columns": list(page.columns), "keys": natsorted(page.keys),
                              "runs": [_row_dict(row, now) for row in page.runs]})  # fmt: skip

    return [Route("/", view(ui, runs_page)), Route("/api/runs", view(ui, runs_api))]


def _filtered(query: RunQuery) -> bool:
    return bool(query.status or query.tag or query.text or query.offset)
