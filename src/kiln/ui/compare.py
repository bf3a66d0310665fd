"""Compare runs: ``GET /compare?run=ID&run=ID...`` (2 to 10 runs) and ``GET /api/compare`` (the same as JSON).

The page overlays each metric's curves (one colour per run) and lists every parameter, marking those that differ;
the curves are fetched by the page from ``/api/runs/{id}/series``, chart by chart as they scroll into view, asking each
run only for the metrics it logged.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..store.views import metric_keys
from .context import Ui, json_response, view
from .pages import HttpError, natural_key

__all__ = ["MAX_RUNS", "compare_impl", "routes"]

MAX_RUNS = 10
_PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#dc2626", "#9333ea", "#0891b2", "#ca8a04", "#db2777", "#4b5563",
            "#65a30d")  # fmt: skip


def _metric_order(key: str) -> tuple[Any, ...]:
    """Loss first, lr after the other quantities, per-layer ``group/layer`` metrics last; names in natural order
    (``layer2`` before ``layer10``), each quantity's validation, train and batch values together."""
    base = key.removeprefix("val_").removeprefix("batch_")
    rank = 0 if base == "loss" else 2 if base == "lr" else 3 if "/" in key else 1
    return rank, natural_key(base), 0 if key.startswith("val_") else 1 if not key.startswith("batch_") else 2


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


_NOISE = {"data_fingerprint", "seed", "verbose"}  # params that differ without saying what a run tried


def _labels(infos: list[Any], differing: list[dict[str, Any]]) -> list[str]:
    """A legend label per run: its name when names differ, else the name and what differs (``lr=0.003``)."""
    names = [info.name for info in infos]
    if len(set(names)) == len(names):
        return names
    shown = [p for p in differing if p["name"] not in _NOISE][:2]
    labels = []
    for i, info in enumerate(infos):
        detail = ", ".join(f"{p['name']}={p['cells'][i]}" for p in shown) or info.id[:6]
        labels.append(f"{info.name} · {detail}")
    return labels if len(set(labels)) == len(labels) else [f"{info.name} · {info.id[:6]}" for info in infos]


def compare_impl(ui: Ui, run_ids: list[str]) -> dict[str, Any]:
    """The runs, their parameters side by side (``differs`` marks rows that are not all equal) and the metrics to
    overlay (every metric any of them logged, loss first)."""
    unique = list(dict.fromkeys(run_ids))
    if not 2 <= len(unique) <= MAX_RUNS:
        raise HttpError(400, f"compare takes 2 to {MAX_RUNS} different runs (run=ID&run=ID...); got {len(unique)}.")
    infos = [ui.store.run(run_id) for run_id in unique]
    if len({info.id for info in infos}) != len(infos):
        raise HttpError(400, "two of the ids given name the same run; pick different runs.")
    names = sorted({key for info in infos for key in info.params})
    params = []
    for name in names:
        values = [_show(info.params[name]) if name in info.params else "–" for info in infos]
        params.append({"name": name, "cells": values, "differs": len(set(values)) > 1})
    labels = _labels(infos, [p for p in params if p["differs"]])
    logged = [[k for k in metric_keys(ui.store, info.id) if k != "epoch"] for info in infos]
    keys = {key for mine in logged for key in mine}
    runs = [{"id": info.id, "name": info.name, "label": labels[i], "status": info.status, "color": _PALETTE[i],
             "info": info, "keys": logged[i]} for i, info in enumerate(infos)]  # fmt: skip
    return {"runs": runs, "params": params, "metrics": sorted(keys, key=_metric_order)}


def routes(ui: Ui) -> list[BaseRoute]:
    def _ids(request: Request) -> list[str]:
        unknown = sorted(set(request.query_params.keys()) - {"run"})
        if unknown:
            raise HttpError(400, f"unknown query parameter {unknown[0][:40]!r}; compare takes run=ID (2 to 10 times).")
        return request.query_params.getlist("run")

    def compare_page(request: Request) -> Response:
        data = compare_impl(ui, _ids(request))
        runs = [{"id": r["id"], "label": r["label"], "color": r["color"], "start": r["info"].start_time,
                 "keys": r["keys"]} for r in data["runs"]]  # fmt: skip
        spec = {"runs": runs, "metrics": data["metrics"]}
        return ui.page(request, "compare.html", title="Compare runs", spec_json=json.dumps(spec), **data)

    def compare_api(request: Request) -> Response:
        data = compare_impl(ui, _ids(request))
        runs = [{k: r[k] for k in ("id", "name", "label", "status", "color")} for r in data["runs"]]
        return json_response({"runs": runs, "params": data["params"], "metrics": data["metrics"]})

    return [Route("/compare", view(ui, compare_page)), Route("/api/compare", view(ui, compare_api))]
