"""One run: ``GET /runs/{id}`` (page), ``GET /api/runs/{id}`` (JSON), ``GET /api/runs/{id}/series`` (its metric
series, downsampled; CSV of one metric with ``key=...&format=csv``) and ``GET /runs/{id}/artifacts/{name}``.

The series route takes ``key`` (repeat it, at most 64 times; default every metric, when a run has at most 64) and
``since`` (the ``state.token`` of the last answer: when the run has not written since, the answer is
``{"changed": false}`` without reading a metric). A page polls it every 1.5 s while the run is running, and fetches
the curves of the charts in view, chart by chart in requests of at most 64 metrics.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from ..store import RunInfo
from ..store.views import metric_keys, run_state, run_versions
from .context import Ui, json_response, view
from .pages import HttpError, csv_text, natural_key

__all__ = ["DOCTOR_ARTIFACT", "chart_groups", "routes", "run_impl", "series_impl"]

DOCTOR_ARTIFACT = "doctor.json"  # the gradient doctor's findings, when a run recorded them: [Finding.to_dict(), ...]
MAX_KEYS = 64  # metrics per series request: the page asks chart by chart, in batches under this
MAX_SERIES = 12  # lines on one chart: more would make a legend nobody can read
_MAX_DOCTOR_BYTES = 1 << 20
_SAFE_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
_SKIPPED = {"epoch"}  # the step's epoch, not a curve worth a chart


def _role(key: str) -> tuple[str, str]:
    """(chart, label) of a metric: ``val_loss`` -> (loss, validation), ``batch_loss`` -> (loss, train (batch)),
    ``update_ratio/conv1`` -> (update_ratio, conv1), ``loss`` -> (loss, train)."""
    if "/" in key:
        group, _, label = key.partition("/")
        return group or key, label or key
    if key.startswith("val_") and len(key) > 4:
        return key[4:], "validation"
    if key.startswith("batch_") and len(key) > 6:
        return key[6:], "train (batch)"
    return key, "train"


def chart_groups(keys: Iterable[str]) -> list[dict[str, Any]]:
    """Which metrics share a chart: train and validation of one quantity on the same axes, loss first, lr last.

    Names sort naturally (``layer2`` before ``layer10``). A chart draws at most ``MAX_SERIES`` lines, the first ones
    in that order; ``total`` counts them all.

    Example:
        >>> chart_groups(["batch_loss", "epoch", "loss", "lr", "val_loss"])
        [{'title': 'loss', 'series': [['batch_loss', 'train (batch)'], ['loss', 'train'], ['val_loss', 'validation']],
          'total': 3, 'log': False}, {'title': 'lr', 'series': [['lr', 'train']], 'total': 1, 'log': False}]
    """
    groups: dict[str, list[list[str]]] = {}
    for key in sorted(set(keys) - _SKIPPED, key=natural_key):
        title, label = _role(key)
        groups.setdefault(title, []).append([key, label])
    order = {"train (batch)": 0, "train": 1, "validation": 2}
    charts: list[dict[str, Any]] = []
    for title, series in groups.items():
        series.sort(key=lambda pair: (order.get(pair[1], 3), natural_key(pair[1])))
        charts.append({"title": title, "series": series[:MAX_SERIES], "total": len(series),
                       "log": title.startswith("update")})  # fmt: skip
    charts.sort(key=lambda c: (c["title"] != "loss", "/" in c["series"][0][0], c["title"] == "lr",
                               natural_key(c["title"])))  # fmt: skip
    return charts


def _findings(ui: Ui, info: RunInfo) -> list[dict[str, Any]] | None:
    """The doctor's findings a run recorded as ``doctor.json``: None when it recorded none; malformed ones say so."""
    blob = info.artifacts.get(DOCTOR_ARTIFACT)
    if blob is None:
        return None
    if blob.size > _MAX_DOCTOR_BYTES:
        return [{"kind": "unreadable", "evidence": f"{DOCTOR_ARTIFACT} is {blob.size} bytes, over 1 MB."}]
    try:
        data = json.loads(bytes(ui.store.blobs.read(blob, label=f"run {info.id} {DOCTOR_ARTIFACT}")))
        found = data.get("findings") if isinstance(data, dict) else data
        if not isinstance(found, list) or not all(isinstance(f, dict) for f in found):
            raise ValueError("expected a list of findings")
    except (ValueError, OSError) as error:
        return [{"kind": "unreadable", "evidence": f"{DOCTOR_ARTIFACT}: {error}"}]
    return [
        {"kind": str(f.get("kind", "?")), "step": f.get("step"), "layers": [str(x) for x in f.get("layers") or []],
         "evidence": str(f.get("evidence", "")), "remedies": [str(x) for x in f.get("remedies") or []]}
        for f in found[:100]
    ]  # fmt: skip


def run_impl(ui: Ui, run_id: str) -> dict[str, Any]:
    """Everything the run page shows but the curves: the run, its charts, model versions and doctor findings."""
    info = ui.store.run(run_id)
    keys = metric_keys(ui.store, info.id)
    return {
        "run": info, "keys": keys, "charts": chart_groups(keys), "versions": run_versions(ui.store, info.id),
        "findings": _findings(ui, info), "state": run_state(ui.store, info.id).token,
    }  # fmt: skip


def series_impl(ui: Ui, run_id: str, keys: list[str] | None = None, since: str | None = None) -> dict[str, Any]:
    """The run's state and, unless it has not changed since ``since``, its metric series (downsampled)."""
    state = run_state(ui.store, run_id)
    answer: dict[str, Any] = {"state": {"status": state.status, "token": state.token, "heartbeat": state.heartbeat}}
    if since is not None and since == state.token:
        return {**answer, "changed": False}
    known = metric_keys(ui.store, state.id)
    wanted = keys or [k for k in known if k not in _SKIPPED]
    if len(wanted) > MAX_KEYS:
        raise HttpError(400, f"at most {MAX_KEYS} metrics per request; got {len(wanted)}.")
    missing = [k for k in wanted if k not in known]
    if missing:
        raise HttpError(404, f"run {state.id} has no metric {missing[0][:80]!r}; it has {', '.join(known)[:400]}.")
    series = ui.series.many(state.id, wanted)
    return {**answer, "changed": True, "charts": chart_groups(known),
            "series": {key: s.as_dict() for key, s in series.items()}}  # fmt: skip


def _info_dict(info: RunInfo) -> dict[str, Any]:
    return {"id": info.id, "name": info.name, "status": info.status, "start_time": info.start_time,
            "end_time": info.end_time, "params": info.params, "tags": info.tags, "system": info.system,
            "latest": info.latest, "artifacts": {k: {"sha256": b.sha256, "size": b.size} for k, b in info.artifacts.items()}}  # fmt: skip  # noqa: E501


def routes(ui: Ui) -> list[BaseRoute]:
    def run_page(request: Request) -> Response:
        data = run_impl(ui, request.path_params["run_id"])
        return ui.page(request, "run.html", title=f"Run {data['run'].name}", now=time.time(),
                       charts_json=json.dumps(data["charts"]), **data)  # fmt: skip

    def run_api(request: Request) -> Response:
        data = run_impl(ui, request.path_params["run_id"])
        return json_response({**_info_dict(data["run"]), "charts": data["charts"], "versions": data["versions"],
                              "findings": data["findings"]})  # fmt: skip

    def series_api(request: Request) -> Response:
        params = request.query_params
        unknown = sorted(set(params.keys()) - {"key", "since", "format"})
        if unknown:
            raise HttpError(400, f"unknown query parameter {unknown[0][:40]!r}; allowed: key, since, format.")
        keys = params.getlist("key") or None
        data = series_impl(ui, request.path_params["run_id"], keys, params.get("since"))
        fmt = params.get("format", "json")
        if fmt == "csv":
            if not keys or len(keys) != 1:
                raise HttpError(400, "format=csv takes exactly one key=METRIC.")
            s = data["series"][keys[0]]
            return Response(csv_text(["step", "time", "value"], zip(s["step"], s["time"], s["value"], strict=True)),
                            media_type="text/csv; charset=utf-8")  # fmt: skip
        if fmt != "json":
            raise HttpError(400, "format must be 'json' or 'csv'.")
        return json_response(data)

    def artifact(request: Request) -> Response:
        info = ui.store.run(request.path_params["run_id"])
        name = request.path_params["name"]
        blob = info.artifacts.get(name)
        if blob is None:
            raise HttpError(404, f"run {info.id} has no artifact {name[:80]!r}.")
        download = name if _SAFE_FILE.fullmatch(name) else "artifact.bin"
        return FileResponse(ui.store.blobs.path(blob.sha256), media_type="application/octet-stream",
                            filename=download, content_disposition_type="attachment")  # fmt: skip

    return [
        Route("/runs/{run_id}", view(ui, run_page)),
        Route("/runs/{run_id}/artifacts/{name}", view(ui, artifact)),
        Route("/api/runs/{run_id}", view(ui, run_api)),
        Route("/api/runs/{run_id}/series", view(ui, series_api)),
    ]
